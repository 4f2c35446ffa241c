import Metrics
import SocketShareCore

/// What an escrow holder counts, through swift-metrics: deposits, claims, refusals by reason,
/// expiries and the shares held now. Without a metrics backend bootstrapped these cost nothing; the
/// broker bootstraps Prometheus and serves the text to `sockshare status --metrics`.
package struct EscrowMetrics: Sendable {
    private let deposits = Counter(label: "sockshare_deposits_total")
    private let claims = Counter(label: "sockshare_claims_total")
    private let expiries = Counter(label: "sockshare_expiries_total")
    private let revocations = Counter(label: "sockshare_revocations_total")
    private let targetExits = Counter(label: "sockshare_target_exits_total")
    private let held = Gauge(label: "sockshare_held_shares")
    private let namedDeposits = Counter(label: "sockshare_named_deposits_total")
    private let namedClaims = Counter(label: "sockshare_named_claims_total")
    private let namedHeld = Gauge(label: "sockshare_named_shares")

    package func deposited(heldNow: Int) {
        deposits.increment()
        held.record(heldNow)
    }

    package func finished(_ outcome: ShareOutcome, heldNow: Int) {
        switch outcome {
        case .claimed: claims.increment()
        case .expired: expiries.increment()
        case .revoked: revocations.increment()
        case .targetExited: targetExits.increment()
        case .holderStopped: break
        }
        held.record(heldNow)
    }

    package func held(_ count: Int) {
        held.record(count)
    }

    /// A named share was deposited.
    package func namedDeposited(heldNow: Int) {
        namedDeposits.increment()
        namedHeld.record(heldNow)
    }

    /// A claimant acknowledged a named share.
    package func namedClaimed() {
        namedClaims.increment()
    }

    /// Named shares ended (claimed, expired, revoked or stopped).
    package func namedEnded(_ outcomes: [ShareOutcome], heldNow: Int) {
        for outcome in outcomes {
            switch outcome {
            case .expired: expiries.increment()
            case .revoked: revocations.increment()
            default: break
            }
        }
        namedHeld.record(heldNow)
    }

    package func refused(_ reason: EscrowFailure) {
        Counter(label: "sockshare_refusals_total", dimensions: [("reason", reason.name)]).increment()
    }
}
