namespace JobRunner.Kubernetes;

/// <summary>
/// The Kubernetes API answered with an error (a <c>Status</c> object, or a plain-text throttling response). Conflicts,
/// missing objects and invalid objects are permanent; throttling (429) and server errors (5xx) are transient.
/// </summary>
public sealed class KubernetesApiException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="statusCode">The HTTP status code (the Status <c>code</c>).</param>
    /// <param name="reason">The Status <c>reason</c>, such as <c>AlreadyExists</c>, <c>NotFound</c>, <c>Invalid</c>, <c>Expired</c>.</param>
    /// <param name="message">What the server said, and what JobRunner was doing.</param>
    /// <param name="causes">The field causes of an <c>Invalid</c> error, each as "field: message".</param>
    /// <param name="retryAfter">How long the server asked to wait (429, 503), when it said.</param>
    /// <param name="innerException">The cause, if any.</param>
    public KubernetesApiException(int statusCode, string? reason, string message, IReadOnlyList<string>? causes = null, TimeSpan? retryAfter = null, Exception? innerException = null)
        : base(message, innerException)
    {
        StatusCode = statusCode;
        Reason = reason;
        Causes = causes ?? [];
        RetryAfter = retryAfter;
    }

    /// <summary>Gets the HTTP status code.</summary>
    public int StatusCode { get; }

    /// <summary>Gets the Status reason (<c>AlreadyExists</c>, <c>NotFound</c>, <c>Invalid</c>, <c>Expired</c>, <c>Gone</c>, <c>TooManyRequests</c>...), when the server gave one.</summary>
    public string? Reason { get; }

    /// <summary>Gets the field causes of an <c>Invalid</c> error, each as "field: message".</summary>
    public IReadOnlyList<string> Causes { get; }

    /// <summary>Gets how long the server asked to wait before trying again, when it said.</summary>
    public TimeSpan? RetryAfter { get; }

    /// <inheritdoc />
    public override bool IsTransient => StatusCode is 429 or >= 500 or 0;

    internal bool IsAlreadyExists => StatusCode == 409 && Reason == "AlreadyExists";

    internal bool IsNotFound => StatusCode == 404;

    internal bool IsExpired => StatusCode == 410;
}
