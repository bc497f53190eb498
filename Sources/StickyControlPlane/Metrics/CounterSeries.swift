import StickyCore
import StickyDataPlane

// What the core's `CounterTable` cannot know: the values of labels that
// the data plane's enums name, and how a family's figures line up with
// them. `show stats`, the exporter and docs/METRICS.md all read these.

extension CounterLabel {
    /// The label's values when they are a fixed set, in the order series
    /// and `show stats` list them; nil for a free-form label.
    var values: [String]? {
        switch self {
        case .direction: return ByteDirection.allCases.map(\.rawValue)
        case .state: return TargetStateName.allCases.map(\.rawValue)
        case .moveReason: return MoveReason.allCases.map(\.description)
        case .closeReason: return CloseReason.counted.map(\.metricName)
        case .proxyRejection: return ProxyRejection.allCases.map(\.metricName)
        case .h2TrackerStop: return H2TrackerStop.allCases.map(\.metricName)
        case .goawayCause: return GoawayCause.allCases.map(\.metricName)
        case .version: return nil
        case .discoveryChange: return DiscoveryChange.allCases.map(\.label)
        }
    }
}

extension CloseReason {
    /// The reasons a connection is counted as closed for: `none` is a
    /// slot's reason before it closes.
    static let counted = CloseReason.allCases.filter { $0 != .none }
}

/// A labelled family's figures, each with its label value.
typealias LabelledFigures = [(label: String, value: UInt64)]

extension WorkerCounters {
    func series(_ family: WorkerCounterFamily) -> LabelledFigures {
        switch family {
        case .closed: return CloseReason.counted.map { ($0.metricName, closed[Int($0.rawValue)]) }
        case .proxyRejected: return ProxyRejection.allCases.map { ($0.metricName, proxyRejected[Int($0.rawValue)]) }
        case .h2Untracked: return H2TrackerStop.allCases.map { ($0.metricName, h2Untracked[Int($0.rawValue)]) }
        case .goawaysSent: return GoawayCause.allCases.map { ($0.metricName, goawaysSent[$0.rawValue]) }
        }
    }
}

extension AffinityCounters {
    var moveSeries: LabelledFigures { MoveReason.allCases.map { ($0.description, moves[$0]) } }
}
