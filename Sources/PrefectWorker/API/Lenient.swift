/// Decodes one element of an array, keeping the error instead of failing the whole array.
struct Lenient<T: Decodable>: Decodable {
    let result: Result<T, Error>
    init(from decoder: Decoder) throws {
        do { result = .success(try T(from: decoder)) } catch { result = .failure(error) }
    }
}
