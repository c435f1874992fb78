import Dispatch

/// Sleeps `seconds` whether or not the calling task is cancelled, for waits that must really wait: a
/// teardown that has started always completes. (`try? await Task.sleep` returns at once in a cancelled
/// task, so a deadline loop built on it spins.)
func sleepThroughCancellation(_ seconds: Double) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(deadline: .now() + max(0, seconds)) { continuation.resume() }
    }
}
