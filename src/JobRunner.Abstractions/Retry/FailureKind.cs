namespace JobRunner;

/// <summary>Whether a failure may go away on a retry.</summary>
public enum FailureKind
{
    /// <summary>May succeed later (network, throttling, infrastructure): retry with back-off.</summary>
    Transient = 0,

    /// <summary>Will fail again (bad input, missing workload, non-retryable exit code): fail now.</summary>
    Permanent = 1,
}
