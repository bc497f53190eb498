extension AffinityBalancer {
    /// A new affinity timeout (discovery read it from the Kubernetes
    /// Service). It applies to every pin from now on, old ones included:
    /// a pin idle longer than the new timeout lapses at its next lookup or
    /// sweep; one a shorter timeout would already have dropped, but that
    /// the sweep had not yet reached, lives on under a longer one.
    public mutating func setAffinityTimeout(ms: Millis) {
        let clamped = min(max(0, ms), AffinityConfig.timeoutMsMax)
        config.timeoutMs = clamped
        table.timeoutSec = UInt32((clamped + 999) / 1000)
    }
}
