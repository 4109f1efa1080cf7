namespace JobRunner.Aws.Http;

/// <summary>Which failures are worth another try, and how long to wait before it (exponential with full jitter).</summary>
internal static class AwsRetry
{
    public static bool IsTransientCode(string code) => code switch
    {
        "Throttling" or "ThrottlingException" or "ThrottledException" or "RequestThrottled" or "RequestThrottledException"
            or "TooManyRequestsException" or "ProvisionedThroughputExceededException" or "TransactionInProgressException"
            or "RequestLimitExceeded" or "BandwidthLimitExceeded" or "SlowDown" or "EC2ThrottledException"
            or "ServiceUnavailable" or "InternalError" or "InternalFailure" or "RequestTimeout" or "RequestTimeoutException"
            or "PriorRequestNotComplete" or "KmsThrottled" => true,
        _ => false,
    };

    public static bool IsTransientStatus(int status) => status is 429 or >= 500;

    public static TimeSpan Backoff(int attempt, TimeSpan baseDelay, TimeSpan maxDelay)
    {
        var cap = Math.Min(maxDelay.TotalMilliseconds, baseDelay.TotalMilliseconds * Math.Pow(2, attempt));
        return TimeSpan.FromMilliseconds(Random.Shared.NextDouble() * cap);
    }
}
