/// Runs two operations concurrently and returns the result of whichever finishes first; the other is cancelled.
func firstOf<T: Sendable>(_ a: @escaping @Sendable () async -> T, _ b: @escaping @Sendable () async -> T) async -> T {
    await withTaskGroup(of: T.self) { group in
        group.addTask(operation: a)
        group.addTask(operation: b)
        let first = await group.next()!
        group.cancelAll()
        return first
    }
}
