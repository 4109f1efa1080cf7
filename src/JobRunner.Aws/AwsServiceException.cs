using System.Net;

namespace JobRunner.Aws;

/// <summary>
/// An AWS service (SQS or S3) refused or failed a request. <see cref="JobRunnerException.IsTransient"/> is
/// <see langword="true"/> for throttling, 5xx and network failures that remained after the client's own retries.
/// </summary>
public sealed class AwsServiceException : JobRunnerException
{
    private readonly bool _transient;

    /// <summary>Initializes a new instance.</summary>
    /// <param name="service">The service: <c>sqs</c> or <c>s3</c>.</param>
    /// <param name="code">The service's error code, e.g. <c>QueueDoesNotExist</c>.</param>
    /// <param name="statusCode">The HTTP status, when there was a response.</param>
    /// <param name="transient">Whether trying again later may succeed.</param>
    /// <param name="message">What happened and what to do about it.</param>
    /// <param name="innerException">The cause, if any.</param>
    public AwsServiceException(string service, string code, HttpStatusCode? statusCode, bool transient, string message, Exception? innerException = null)
        : base(message, innerException)
    {
        Service = service;
        Code = code;
        StatusCode = statusCode;
        _transient = transient;
    }

    /// <summary>Gets the service: <c>sqs</c> or <c>s3</c>.</summary>
    public string Service { get; }

    /// <summary>Gets the service's error code, without its namespace (e.g. <c>QueueDoesNotExist</c>).</summary>
    public string Code { get; }

    /// <summary>Gets the HTTP status, when there was a response.</summary>
    public HttpStatusCode? StatusCode { get; }

    /// <inheritdoc />
    public override bool IsTransient => _transient;
}
