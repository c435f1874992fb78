import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A NULL-terminated `char *[]` for exec-family calls.
struct CStringArray {
    let pointers: [UnsafeMutablePointer<CChar>?]
    init(_ strings: [String]) { pointers = strings.map { strdup($0) } + [nil] }
    func free() { for p in pointers { Glibc.free(p) } }
}

/// `strerror(errno)`: what the last failed system call said.
func errnoText() -> String { String(cString: strerror(errno)) }
