import Glibc
import Logging
import StickyCore

// Step 4 (PROXY header receive) and the PROXY header sent in step 7.

extension Worker {
    // MARK: - PROXY protocol
    //
    // Accept side: a connection from a `proxy_protocol` listener starts in
    // `.proxyHeader`. One recv at a time, hard-linked to a timeout for the
    // time left until its deadline, fills the slot's header area; each
    // completion re-parses the area (at most 536 bytes) until the header is
    // whole, then the header's source becomes the client and placement runs
    // as for any connection. Send side: once the target is connected, the
    // pool's header and any payload that came with the client's header are
    // written with one non-blocking send(2), before either engine arms, so
    // no forwarded byte can overtake them.

    @inline(__always)
    func proxyArea(_ i: Int) -> UnsafeMutableRawPointer {
        guard let proxyAreas else { preconditionFailure("PROXY area used on a worker without proxy_protocol listeners") }
        return proxyAreas + i * ProxyHeader.headerBytesMax
    }

    func armProxyRecv(_ i: Int) {
        guard let proxyTimeouts else { preconditionFailure("PROXY recv on a worker without proxy_protocol listeners") }
        let received = Int(slots[i].proxyReceived)
        // `lastActive` holds the accept time until the header is whole.
        let leftMs = slots[i].lastActive + proxyTimeoutMs[Int(slots[i].listener)] - now
        guard leftMs > 0, received < ProxyHeader.headerBytesMax else {
            rejectProxy(i, received < ProxyHeader.headerBytesMax ? .timeout : .oversized)
            return
        }
        // Read when the entry is submitted, so it lives in the slot's place
        // of the table until then.
        proxyTimeouts.set(i, ms: leftMs)
        ring.recv(slots[i].clientFD, into: proxyArea(i) + received, count: ProxyHeader.headerBytesMax - received,
                  timeout: proxyTimeouts, i, userData: userData(.proxyRecv, i), timeoutUserData: userData(.proxyTimeout, i))
        slots[i].inflight += 2
    }

    func onProxyRecv(_ i: Int, _ res: Int32) {
        if slots[i].state == .closing { return }
        precondition(slots[i].state == .proxyHeader, "PROXY header data on a slot that is not waiting for one")
        if res == 0 {
            rejectProxy(i, .truncated)
            return
        }
        if res == -ECANCELED {
            // The linked timeout fired first.
            rejectProxy(i, .timeout)
            return
        }
        if res == -EAGAIN || res == -EINTR {
            armProxyRecv(i)
            return
        }
        guard res > 0 else {
            rejectProxy(i, .readError)
            return
        }
        let received = Int(slots[i].proxyReceived) + Int(res)
        precondition(received <= ProxyHeader.headerBytesMax, "recv wrote past the PROXY header area")
        slots[i].proxyReceived = UInt16(received)
        switch ProxyHeader.parse(UnsafeRawBufferPointer(start: proxyArea(i), count: received)) {
        case .needMore:
            armProxyRecv(i)
        case .invalid(let reason):
            rejectProxy(i, ProxyRejection(reason))
        case .complete(let header):
            counters[.proxyHeadersReceived] += 1
            slots[i].proxyConsumed = UInt16(header.consumed)
            // LOCAL, UNKNOWN and AF_UNSPEC carry no source: the socket's
            // peer (already in `client`) stands.
            // The access log names the client the header names, port included.
            if let source = header.source {
                slots[i].client = source.ip
                slots[i].clientPort = source.port
            }
            slots[i].enter(.connecting)
            slots[i].lastActive = now
            connect(i)
        }
    }

    func rejectProxy(_ i: Int, _ reason: ProxyRejection) {
        proxyRejected(reason, peer: slots[i].client)
        beginClose(i, .proxyHeader, reset: reason == .readError)
    }

    /// Counts a refused connection; debug-logs each and warns on the 1st,
    /// 2nd, 4th, 8th... so a scan or a misconfigured proxy cannot flood the log.
    func proxyRejected(_ reason: ProxyRejection, peer: IPAddress) {
        counters.proxyRejected[Int(reason.rawValue)] += 1
        logger.debug("PROXY header refused", metadata: ["reason": "\(reason.metricName)", "peer": "\(peer)"])
        let total = counters.proxyRejected.reduce(0, +)
        if total & (total - 1) == 0 {
            logger.warning("connections closed for their PROXY header (logged at 1, 2, 4, 8... times)",
                           metadata: ["reason": "\(reason.metricName)", "peer": "\(peer)", "times": "\(total)"])
        }
    }

    /// Writes the pool's PROXY header, then any payload that arrived with
    /// the client's own header, to a just-connected target. A fresh socket's
    /// send buffer holds far more than these at most 644 bytes, so one
    /// non-blocking send takes them whole; if it cannot, the connection is
    /// reset rather than forwarded with a gap. False when it was closed.
    func sendProxyPreamble(_ i: Int) -> Bool {
        let pool = Int(slots[i].pool)
        let version = pool < settings.poolSendProxy.count ? settings.poolSendProxy[pool] : nil
        let consumed = Int(slots[i].proxyConsumed)
        let early = Int(slots[i].proxyReceived) - consumed
        guard version != nil || early > 0 else { return true }
        let out = proxyScratch
        var length = 0
        if let version {
            var source: SocketAddress?
            var destination: SocketAddress?
            if consumed > 0, case .complete(let h) = ProxyHeader.parse(UnsafeRawBufferPointer(start: proxyArea(i), count: consumed)) {
                source = h.source
                destination = h.destination
            }
            if source == nil || destination == nil {
                source = Sockets.peer(of: slots[i].clientFD)
                destination = Sockets.local(of: slots[i].clientFD)
            }
            length = ProxyHeader.encode(version, source: source, destination: destination,
                                        into: UnsafeMutableRawBufferPointer(rebasing: out[0..<ProxyHeader.encodedBytesMax]))
            precondition(length > 0, "a PROXY header did not fit encodedBytesMax")
        }
        if early > 0 {
            (out.baseAddress! + length).copyMemory(from: proxyArea(i) + consumed, byteCount: early)
            length += early
        }
        let sent = send(slots[i].backendFD, out.baseAddress, length, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        guard sent == length else {
            counters[.proxySendFailures] += 1
            beginClose(i, .reset, reset: true)
            return false
        }
        if version != nil { counters[.proxyHeadersSent] += 1 }
        slots[i].up.bytes += UInt64(early)
        return true
    }
}
