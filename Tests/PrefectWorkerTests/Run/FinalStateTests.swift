import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

final class FinalStateTests: XCTestCase {
    func testDecisionTable() {
        let table: [(StateOwner, ExitStatus, FinalState?)] = [
            // Worker-owned runs: the worker reports every outcome.
            (.worker, .exited(0), FinalState(type: .completed, message: "Job exited with code 0.")),
            (.worker, .exited(1), FinalState(type: .failed, message: "Job exited with code 1.")),
            (.worker, .exited(3), FinalState(type: .failed, message: "Job exited with code 3.")),
            (.worker, .exited(126), FinalState(type: .failed, message: "Job exited with code 126 (command not executable).")),
            (.worker, .exited(127), FinalState(type: .failed, message: "Job exited with code 127 (command not found).")),
            (.worker, .exited(137), FinalState(type: .failed, message: "Job exited with code 137 (killed, possibly out of memory).")),
            (.worker, .exited(143), FinalState(type: .failed, message: "Job exited with code 143 (terminated by SIGTERM).")),
            (.worker, .exited(247), FinalState(type: .failed, message: "Job exited with code 247 (memory limit reached).")),
            (.worker, .exited(255), FinalState(type: .failed, message: "Job exited with code 255.")),
            (.worker, .signaled(SIGKILL), FinalState(type: .crashed, message: "Job was killed by SIGKILL.")),
            (.worker, .signaled(SIGTERM), FinalState(type: .crashed, message: "Job was killed by SIGTERM.")),
            (.worker, .signaled(SIGSEGV), FinalState(type: .crashed, message: "Job was killed by SIGSEGV.")),
            (.worker, .signaled(40), FinalState(type: .crashed, message: "Job was killed by signal 40.")),
            // Engine-owned runs: a clean exit means the engine reported; anything else is a crash.
            (.engine, .exited(0), nil),
            (.engine, .exited(1), FinalState(type: .crashed, message: "Flow run process exited with code 1 before the flow run reached a final state.")),
            (.engine, .exited(127), FinalState(type: .crashed, message: "Flow run process exited with code 127 (command not found) before the flow run reached a final state.")),
            (.engine, .exited(143), FinalState(type: .crashed, message: "Flow run process exited with code 143 (terminated by SIGTERM) before the flow run reached a final state.")),
            (.engine, .signaled(SIGKILL), FinalState(type: .crashed, message: "Flow run process was killed by SIGKILL before the flow run reached a final state.")),
            (.engine, .signaled(SIGTERM), FinalState(type: .crashed, message: "Flow run process was killed by SIGTERM before the flow run reached a final state.")),
            (.engine, .signaled(SIGINT), FinalState(type: .crashed, message: "Flow run process was killed by SIGINT before the flow run reached a final state.")),
        ]
        for (owner, exit, expected) in table {
            XCTAssertEqual(FinalState.decide(owner: owner, exit: exit), expected, "owner \(owner), \(exit)")
        }
    }

    func testWorkerNeverReportsNothingAndEngineNeverReportsSuccess() {
        for code in Int32(0)...255 {
            let worker = FinalState.decide(owner: .worker, exit: .exited(code))
            XCTAssertNotNil(worker, "worker, exit \(code)")
            XCTAssertEqual(worker?.type, code == 0 ? .completed : .failed, "worker, exit \(code)")
            let engine = FinalState.decide(owner: .engine, exit: .exited(code))
            XCTAssertEqual(engine?.type, code == 0 ? nil : .crashed, "engine, exit \(code)")
        }
        for signal in Int32(1)...31 {
            XCTAssertEqual(FinalState.decide(owner: .worker, exit: .signaled(signal))?.type, .crashed)
            XCTAssertEqual(FinalState.decide(owner: .engine, exit: .signaled(signal))?.type, .crashed)
        }
    }

    func testFinalStatesAreTerminal() {
        for owner in [StateOwner.worker, .engine] {
            for exit in [ExitStatus.exited(0), .exited(2), .signaled(SIGKILL)] {
                if let state = FinalState.decide(owner: owner, exit: exit) {
                    XCTAssertTrue(state.type.isTerminal, "\(owner) \(exit) → \(state.type)")
                }
            }
        }
    }
}
