import CURingShim
import Glibc
import Logging
import StickyCore

// Step 7, splice engine: readiness polls on the ring, then non-blocking
// splice(2) inline, source → pipe → destination.

extension Worker {
    /// What a readiness poll waits for: data, the peer's FIN, or an error.
    static let pollMask = UInt32(POLLIN) | UInt32(UInt16(bitPattern: sticky_pollrdhup)) | UInt32(POLLERR) | UInt32(POLLHUP)

    func armPoll(_ i: Int, client: Bool) {
        let fd = client ? slots[i].clientFD : slots[i].backendFD
        ring.pollMultishot(fd, events: Worker.pollMask, userData: userData(client ? .pollClient : .pollBackend, i))
        slots[i].inflight += 1
        if client { slots[i].clientPollArmed = true } else { slots[i].backendPollArmed = true }
    }

    func armWritable(_ i: Int, client: Bool) {
        let fd = client ? slots[i].clientFD : slots[i].backendFD
        ring.poll(fd, events: UInt32(POLLOUT), userData: userData(client ? .writableClient : .writableBackend, i))
        slots[i].inflight += 1
    }

    func onPoll(_ i: Int, client: Bool, _ res: Int32, _ more: Bool) {
        if !more {
            if client { slots[i].clientPollArmed = false } else { slots[i].backendPollArmed = false }
        }
        // A poll that outlived its connection's close: its last completion.
        if slots[i].state == .closing { return }
        precondition(slots[i].state == .open, "readiness on a slot that is not open")
        // Readable client feeds `up`; readable backend feeds `down`.
        let down = !client
        if res >= 0 { pump(i, down: down) }
        guard slots[i].state == .open else { return }
        let stillReading = down ? !slots[i].down.sourceEOF : !slots[i].up.sourceEOF
        if !more && stillReading {
            if client { if !slots[i].clientPollArmed { armPoll(i, client: true) } }
            else if !slots[i].backendPollArmed { armPoll(i, client: false) }
        }
    }

    func onWritable(_ i: Int, client: Bool) {
        // A writable client drains `down`; a writable backend drains `up`.
        let down = client
        if down { slots[i].down.awaitingWritable = false } else { slots[i].up.awaitingWritable = false }
        if slots[i].state == .closing { return }
        precondition(slots[i].state == .open, "writable on a slot that is not open")
        if slots[i].engine == .copy { flush(i, down: down) } else { pump(i, down: down) }
    }

    /// Moves bytes source → pipe → destination with non-blocking splice(2)
    /// until the source is empty or the destination is full.
    func pump(_ i: Int, down: Bool) {
        guard let pipes else { return }
        var d = down ? slots[i].down : slots[i].up
        if d.awaitingWritable || d.awaitingPipe || d.finished { return }
        let src = down ? slots[i].backendFD : slots[i].clientFD
        let dst = down ? slots[i].clientFD : slots[i].backendFD
        var moved = false
        var outcome: CloseReason = .none
        loop: while true {
            if d.pipeBytes > 0 {
                let n = sticky_splice(pipes.readFD(d.pipe), dst, Int(d.pipeBytes))
                if n > 0 {
                    d.pipeBytes -= Int32(n)
                    d.bytes += UInt64(n)
                    moved = true
                    continue
                }
                if n == -Int(EAGAIN) {
                    d.awaitingWritable = true
                    armWritable(i, client: down)
                    break loop
                }
                outcome = .reset
                break loop
            }
            if d.sourceEOF {
                if d.pipe >= 0 {
                    pipes.release(d.pipe)
                    d.pipe = -1
                    resourcesFreed = true
                }
                shutdown(dst, Int32(SHUT_WR))
                d.finished = true
                break loop
            }
            if d.pipe < 0 {
                guard let p = pipes.acquire(mayCreate: pipeDescriptorsLeft >= 2) else {
                    d.awaitingPipe = true
                    counters[.pipeWaits] += 1
                    waiting.append((Int32(i), slots[i].generation, down))
                    break loop
                }
                d.pipe = p
            }
            let n = sticky_splice(src, pipes.writeFD(d.pipe), Int(pipes.pipeSizeBytes))
            if n > 0 {
                d.pipeBytes = Int32(n)
                continue
            }
            if n == 0 {
                d.sourceEOF = true
                continue
            }
            if n == -Int(EAGAIN) {
                // Source drained: give the empty pipe back so idle
                // connections hold none.
                pipes.release(d.pipe)
                d.pipe = -1
                resourcesFreed = true
                break loop
            }
            outcome = .reset
            break loop
        }
        if down { slots[i].down = d } else { slots[i].up = d }
        if moved { touch(i) }
        if outcome != .none {
            beginClose(i, outcome, reset: true)
        } else if slots[i].up.finished && slots[i].down.finished {
            beginClose(i, .done)
        }
    }
}
