import Foundation
import Logging
import StickyCore

extension ControlPlane {
    /// Writes the registry to the state file (`AtomicFile`), so that the
    /// next start lays the runtime changes over the config.
    func persist() {
        guard let path = stateFilePath else { return }
        // One writer at a time (admin, tick and takeover threads all
        // persist): they share the temporary file, and renames landing out
        // of order would leave an older registry in place.
        persistLock.lock()
        defer { persistLock.unlock() }
        guard persisting.load(ordering: .acquiring) else { return }
        let r = registry
        let file = StateFile(registry: r, hashKey: generatedKey ? hashKey.hex : nil,
                             nowMs: clock.nowMs(), nowUnixMs: clock.unixMs())
        do {
            try AtomicFile.write(try file.encoded(), to: path)
            state.withLock { $0.lastPersistError = nil }
        } catch {
            logger.error("could not write the state file; runtime changes will not survive a restart",
                         metadata: ["path": "\(path)", "error": "\(error)"])
            state.withLock { $0.lastPersistError = "\(error)" }
        }
    }

    /// Upgrade: stop (or resume) writing the state file.
    /// Under the persist lock: once it returns, no write is in flight.
    func setPersisting(_ on: Bool) { persistLock.withLock { persisting.store(on, ordering: .releasing) } }
}
