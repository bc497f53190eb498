
// The idle list: open connections ordered by last activity, linked
// through the slots, so the idle sweep (step 9) only looks at its head.

extension Worker {
    func idleAppend(_ i: Int) {
        slots[i].prev = idleTail
        slots[i].next = -1
        if idleTail >= 0 { slots[Int(idleTail)].next = Int32(i) } else { idleHead = Int32(i) }
        idleTail = Int32(i)
        slots[i].onIdleList = true
    }

    func idleRemove(_ i: Int) {
        guard slots[i].onIdleList else { return }
        let p = slots[i].prev, n = slots[i].next
        if p >= 0 { slots[Int(p)].next = n } else { idleHead = n }
        if n >= 0 { slots[Int(n)].prev = p } else { idleTail = p }
        slots[i].onIdleList = false
        slots[i].prev = -1
        slots[i].next = -1
    }

    /// Marks activity: the list stays ordered by last activity, so the idle
    /// sweep only ever looks at its head.
    @inline(__always)
    func touch(_ i: Int) {
        slots[i].lastActive = now
        if idleTail != Int32(i) {
            idleRemove(i)
            idleAppend(i)
        }
    }
}
