using Microsoft.Extensions.Logging;

namespace JobRunner.Aws;

/// <summary>The package's log messages, source-generated.</summary>
internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Error, "SQS message {MessageId} on {QueueUrl} cannot be read ({Problem}); moved to the dead-letter queue {DeadLetterUrl} (deleted when there is none).")]
    public static partial void PoisonMessage(ILogger logger, string? messageId, string queueUrl, string problem, string? deadLetterUrl);

    [LoggerMessage(2, LogLevel.Warning, "SQS message {MessageId} could not be handled; it becomes visible again after its visibility timeout.")]
    public static partial void MessageFailed(ILogger logger, string? messageId, Exception exception);

    [LoggerMessage(3, LogLevel.Information, "Created the SQS queue {QueueName}: {QueueUrl}.")]
    public static partial void QueueCreated(ILogger logger, string queueName, string queueUrl);

    [LoggerMessage(4, LogLevel.Warning, "Could not hand {Count} received SQS messages back at shutdown; they become visible again after their visibility timeout.")]
    public static partial void ReturnFailed(ILogger logger, int count, Exception exception);

    [LoggerMessage(5, LogLevel.Error, "SQS message {MessageId} on {QueueUrl} keeps its body in S3 ({PayloadKey}), but this host has no SqsQueueOptions.LargePayloadBucket; the message is left in the queue. Set LargePayloadBucket (and PayloadStorage) on every host that uses the queue.")]
    public static partial void PayloadBucketMissing(ILogger logger, string? messageId, string queueUrl, string payloadKey);
}
