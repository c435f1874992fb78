/// Booleans as Prefect's settings accept them.
enum JSONBoolean {
    static func parse(_ raw: String) -> Bool? {
        switch raw.lowercased() {
        case "1", "true", "yes", "on", "t", "y": true
        case "0", "false", "no", "off", "f", "n": false
        default: nil
        }
    }
}
