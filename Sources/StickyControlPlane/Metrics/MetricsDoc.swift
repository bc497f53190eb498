import StickyCore

/// The series tables of docs/METRICS.md, made from `CounterTable`. A unit
/// test (MetricsDocTests) fails when the doc and the table disagree, and
/// with STICKYD_UPDATE_DOCS=1 writes these tables into the doc.
enum MetricsDoc {
    static let begin = "<!-- Generated from CounterTable (Sources/StickyCore/Counters/CounterTable.swift): edit the table, then run STICKYD_UPDATE_DOCS=1 swift test --filter MetricsDocTests. -->"
    static let end = "<!-- End of the generated tables. -->"

    static func title(_ scope: CounterScope) -> String {
        switch scope {
        case .target: return "Per target:"
        case .pool: return "Per pool (affinity):"
        case .worker: return "Per worker (the data path and its loop):"
        case .peer: return "Per peer member (`peers:`; the figures of `show peers`):"
        case .process: return "The process:"
        }
    }

    /// The help text, then the values of each label that has a fixed set.
    static func meaning(_ f: CounterField) -> String {
        var text = f.help
        for label in f.extraLabels {
            guard let values = label.values else { continue }
            text += " `\(label.name)`: " + values.map { "`\($0)`" }.joined(separator: ", ") + "."
        }
        return text
    }

    /// Everything between `begin` and `end`, those lines included.
    static func tables() -> String {
        var lines = [begin, ""]
        for scope in CounterScope.allCases {
            lines += [title(scope), "", "| name | type | labels | meaning |", "|---|---|---|---|"]
            for f in CounterTable.fields where f.scope == scope {
                guard let metric = f.metric else { continue }
                lines.append("| `\(metric)` | \(f.kind.rawValue) | \(f.labels.joined(separator: ", ")) | \(meaning(f)) |")
            }
            lines.append("")
        }
        lines.append(end)
        return lines.joined(separator: "\n")
    }
}
