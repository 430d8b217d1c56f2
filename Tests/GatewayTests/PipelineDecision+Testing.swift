@testable import Gateway

/// Reads of a decision's action that leave the decision whole: the action is not copyable, and a
/// test's `if case` on it would consume it.
extension PipelineDecision {
    var proxyPlan: ProxyPlan? {
        switch action {
        case .proxy(let plan): plan
        default: nil
        }
    }

    var error: GatewayError? {
        switch action {
        case .error(let error): error
        default: nil
        }
    }

    var response: LocalResponse? {
        switch action {
        case .respond(let response): response
        default: nil
        }
    }

    /// For failure messages.
    var actionDescription: String {
        switch action {
        case .proxy(let plan): "proxy to \(plan.route.name)"
        case .error(let error): "error \(error)"
        case .respond(let response): "respond \(response.status)"
        }
    }
}
