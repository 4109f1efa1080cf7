using Amazon.Runtime;

namespace JobRunner.Aws;

/// <summary>Settings of the SQS job queue, validated when the host starts.</summary>
public sealed class SqsQueueOptions
{
    /// <summary>Gets or sets the AWS region, e.g. <c>eu-west-1</c>.</summary>
    /// <value>The default value is the <c>AWS_REGION</c> (or <c>AWS_DEFAULT_REGION</c>) environment variable, if set.</value>
    public string? Region { get; set; } = AwsDefaults.Region();

    /// <summary>Gets or sets the SQS endpoint to use instead of AWS's, for emulators (e.g. <c>http://127.0.0.1:4566</c>).</summary>
    /// <value>The default value is <see langword="null"/>: <c>https://sqs.{Region}.amazonaws.com</c>.</value>
    public Uri? ServiceUrl { get; set; }

    /// <summary>Gets or sets the credentials; <see langword="null"/> resolves them through the AWS default chain
    /// (environment variables, profile, web identity, container or instance role).</summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public AWSCredentials? Credentials { get; set; }

    /// <summary>Gets or sets the name (or full URL) of the queue when <see cref="Bands"/> is empty (one queue for all
    /// priorities). It is not used when <see cref="Bands"/> has bands: each band names its own queue. A FIFO queue's name
    /// ends in <c>.fifo</c>, which is added to a name (not a URL) when <see cref="Fifo"/> is set.</summary>
    /// <value>The default value is <c>jobrunner</c>.</value>
    public string QueueName { get; set; } = "jobrunner";

    /// <summary>
    /// Gets the priority bands, one queue each, highest first when taking. Empty means one queue for priorities 1–10
    /// named <see cref="QueueName"/>. Each band holds the priorities from its <see cref="SqsPriorityBand.MinPriority"/>
    /// up to the next band's.
    /// </summary>
    /// <value>The default value is empty.</value>
    public IList<SqsPriorityBand> Bands { get; } = [];

    /// <summary>
    /// Gets or sets whether the queues are FIFO queues. The tenant is the message group: one tenant's jobs are delivered
    /// in the order they were sent, and one tenant's jobs do not hold up another tenant's. SQS delivers no message of a
    /// group while another message of that group is in flight, and a message stays in flight while its job runs (its
    /// visibility is the lease), so a tenant's jobs run one receive at a time (a receive can bring several of them): a
    /// long-running job holds up its tenant's later jobs until it ends. Use a standard queue (the default) for jobs of
    /// one tenant to run side by side. A job that is not due yet is held in flight (there are no per-message delays on
    /// FIFO queues) in a group of its own, sent again about every 12 hours; SQS limits how many messages a FIFO queue
    /// may have in flight, and receives stop when it is reached, so keep many far-off scheduled jobs on standard queues.
    /// </summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool Fifo { get; set; }

    /// <summary>Gets or sets whether missing queues (and the dead-letter queue) are created at start. Without it, a missing
    /// queue fails the host start with an error that names it.</summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool CreateQueues { get; set; }

    /// <summary>
    /// Gets or sets the dead-letter queue's name: poison messages (that cannot be read) are moved there, and, for queues
    /// created by JobRunner with <see cref="MaxReceiveCount"/> set, SQS redrives a message there after that many receives.
    /// <see langword="null"/> deletes poison messages after logging them.
    /// </summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public string? DeadLetterQueueName { get; set; }

    /// <summary>
    /// Gets or sets how many receives a message may have before SQS moves it to the dead-letter queue (a redrive policy on
    /// the queues JobRunner creates). Leave it unset: the job store decides retries and quarantines a job that keeps
    /// killing its worker, and the queue moves unreadable messages itself. SQS counts every receive, also of a job handed
    /// back (its affinity keeps it off a worker, a worker shuts down) or waiting out a long FIFO delay, so a redrive policy
    /// can move a healthy job's only message away while the store still has the job Queued, and the job never runs.
    /// </summary>
    /// <value>The default value is <see langword="null"/>: no redrive policy.</value>
    public int? MaxReceiveCount { get; set; }

    /// <summary>Gets or sets how long one ReceiveMessage call waits for messages (long polling), up to 20 seconds.</summary>
    /// <value>The default value is 20 seconds.</value>
    public TimeSpan WaitTime { get; set; } = TimeSpan.FromSeconds(20);

    /// <summary>Gets or sets how often a throttled, 5xx or failed request is retried before it surfaces as a transient error.</summary>
    /// <value>The default value is 3.</value>
    public int MaxRetries { get; set; } = 3;

    /// <summary>
    /// Gets or sets the S3 bucket that holds message bodies larger than <see cref="LargePayloadThreshold"/>, with only a
    /// pointer in SQS. <see langword="null"/> rejects such messages.
    /// </summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public string? LargePayloadBucket { get; set; }

    /// <summary>Gets or sets the message size, in bytes, above which the body goes to <see cref="LargePayloadBucket"/>.</summary>
    /// <value>The default value is 256,000 (just under SQS's 256 KiB limit).</value>
    public int LargePayloadThreshold { get; set; } = 256_000;

    /// <summary>
    /// Gets or sets the S3 settings used for large payloads (endpoint, path style, prefix, region, credentials); its
    /// <see cref="S3StoreOptions.Bucket"/> is not used (<see cref="LargePayloadBucket"/> is). A <see langword="null"/>
    /// <see cref="S3StoreOptions.Region"/> or <see cref="S3StoreOptions.Credentials"/> means the queue's. Note that a
    /// new <see cref="S3StoreOptions"/> takes its region from <c>AWS_REGION</c>, which then wins over the queue's.
    /// </summary>
    /// <value>The default value is an <see cref="S3StoreOptions"/> with no region and no credentials: the queue's.</value>
    public S3StoreOptions PayloadStorage { get; set; } = new() { Region = null };
}

/// <summary>One priority band of the SQS queue: the priorities from <paramref name="MinPriority"/> up to the next band's go to one queue.</summary>
/// <param name="MinPriority">The lowest priority of the band, 1 to 10.</param>
/// <param name="QueueName">The queue's name, or its full URL.</param>
public sealed record SqsPriorityBand(int MinPriority, string QueueName);

/// <summary>Settings of the S3 log and checkpoint stores, validated when the host starts.</summary>
public sealed class S3StoreOptions
{
    /// <summary>Gets or sets the bucket.</summary>
    /// <value>The default value is <see langword="null"/>, which fails validation: set it.</value>
    public string? Bucket { get; set; }

    /// <summary>Gets or sets the prefix of every key, e.g. <c>jobrunner/logs/</c>.</summary>
    /// <value>The default value is empty.</value>
    public string Prefix { get; set; } = "";

    /// <summary>Gets or sets the AWS region.</summary>
    /// <value>The default value is the <c>AWS_REGION</c> (or <c>AWS_DEFAULT_REGION</c>) environment variable, if set.</value>
    public string? Region { get; set; } = AwsDefaults.Region();

    /// <summary>Gets or sets the S3 endpoint to use instead of AWS's, for emulators.</summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public Uri? ServiceUrl { get; set; }

    /// <summary>Gets or sets whether the bucket goes in the path (<c>http://host/bucket/key</c>) instead of the host name; emulators need it.</summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool ForcePathStyle { get; set; }

    /// <summary>Gets or sets the credentials; <see langword="null"/> resolves them through the AWS default chain.</summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public AWSCredentials? Credentials { get; set; }

    /// <summary>Gets or sets whether a missing bucket is created at start.</summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool CreateBucket { get; set; }
}

/// <summary>Defaults read from the AWS environment variables.</summary>
internal static class AwsDefaults
{
    public static string? Region()
    {
        var region = Environment.GetEnvironmentVariable("AWS_REGION");
        return string.IsNullOrWhiteSpace(region) ? NullIfBlank(Environment.GetEnvironmentVariable("AWS_DEFAULT_REGION")) : region;
    }

    private static string? NullIfBlank(string? value) => string.IsNullOrWhiteSpace(value) ? null : value;
}
