using Amazon;
using Amazon.Runtime;
using Amazon.Runtime.Credentials;
using JobRunner.Aws.Http;
using JobRunner.Aws.S3;
using JobRunner.Aws.Sqs;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace JobRunner.Aws;

/// <summary>Builds the queue and the stores from their options: region, endpoint, credentials.</summary>
internal static class AwsSetup
{
    public static AWSCredentials ResolveCredentials(AWSCredentials? configured, string optionsName)
    {
        if (configured is not null)
        {
            return configured;
        }

        try
        {
            var credentials = new DefaultAWSCredentialsIdentityResolver().ResolveIdentity(null);
            return credentials ?? throw new AmazonClientException("The default credential chain found nothing.");
        }
        catch (AmazonClientException e)
        {
            throw new AwsServiceException(
                "sts",
                "MissingCredentials",
                null,
                transient: false,
                $"No AWS credentials were found ({e.Message}). Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile with AWS_PROFILE, run with an instance or container role, or set {optionsName}.Credentials.",
                e);
        }
    }

    public static SqsJobQueue CreateQueue(SqsQueueOptions options, TimeProvider time, ILogger? logger = null, HttpMessageHandler? transport = null)
    {
        var credentials = ResolveCredentials(options.Credentials, nameof(SqsQueueOptions));
        var client = CreateSqsClient(options, credentials, time, transport);
        S3Bucket? payloads = null;
        if (options.LargePayloadBucket is { } bucket)
        {
            var s3 = options.PayloadStorage;
            payloads = S3Bucket.Create(
                new S3StoreOptions
                {
                    Bucket = bucket,
                    Prefix = s3.Prefix,
                    Region = s3.Region ?? options.Region,
                    ServiceUrl = s3.ServiceUrl,
                    ForcePathStyle = s3.ForcePathStyle,
                },
                s3.Credentials ?? credentials);
        }

        return new SqsJobQueue(client, options, time, logger ?? NullLogger.Instance, payloads);
    }

    public static SqsClient CreateSqsClient(SqsQueueOptions options, AWSCredentials credentials, TimeProvider time, HttpMessageHandler? transport = null)
    {
        var region = RegionEndpoint.GetBySystemName(options.Region);
        var endpoint = options.ServiceUrl ?? new Uri($"https://sqs.{options.Region}.amazonaws.com/");
        transport ??= new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(5), MaxConnectionsPerServer = 64 };
        var http = new HttpClient(new SigV4Handler(credentials, region, "sqs", time, transport)) { Timeout = options.WaitTime + TimeSpan.FromSeconds(30) };
        return new SqsClient(http, endpoint, time, options.MaxRetries);
    }

    public static S3Bucket CreateBucket(S3StoreOptions options)
        => S3Bucket.Create(options, ResolveCredentials(options.Credentials, nameof(S3StoreOptions)));
}

/// <summary>At host start, before the worker: finds or creates the queues and buckets, so a bad setup fails the start.</summary>
internal sealed class AwsStartup(IServiceProvider services, IEnumerable<AwsStartStep> steps) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        foreach (var step in steps)
        {
            await step.RunAsync(services, cancellationToken).ConfigureAwait(false);
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}

/// <summary>One check to run at start.</summary>
internal sealed class AwsStartStep(Func<IServiceProvider, CancellationToken, Task> run)
{
    public Task RunAsync(IServiceProvider services, CancellationToken cancellationToken) => run(services, cancellationToken);
}

/// <summary>Validates <see cref="SqsQueueOptions"/> at host start; every message names the fix.</summary>
internal sealed class SqsQueueOptionsValidator : IValidateOptions<SqsQueueOptions>
{
    public ValidateOptionsResult Validate(string? name, SqsQueueOptions options)
    {
        var errors = new List<string>();
        Region(errors, nameof(SqsQueueOptions), options.Region, options.ServiceUrl);
        if (options.Bands.Count == 0 && string.IsNullOrWhiteSpace(options.QueueName))
        {
            errors.Add("SqsQueueOptions.QueueName is empty. Set it to the queue's name or URL, or add priority bands to SqsQueueOptions.Bands.");
        }

        var seen = new HashSet<int>();
        foreach (var band in options.Bands)
        {
            if (band is null || band.MinPriority is < JobRequest.MinPriority or > JobRequest.MaxPriority)
            {
                errors.Add($"SqsQueueOptions.Bands has a band with MinPriority {band?.MinPriority}. Use 1 to 10.");
            }
            else if (!seen.Add(band.MinPriority))
            {
                errors.Add($"SqsQueueOptions.Bands has two bands starting at priority {band.MinPriority}. Give each band its own MinPriority.");
            }

            if (band is not null && string.IsNullOrWhiteSpace(band.QueueName))
            {
                errors.Add($"SqsQueueOptions.Bands: the band from priority {band.MinPriority} has no QueueName. Set the queue's name or URL.");
            }
        }

        if (options.Bands.Count > 0 && !seen.Contains(JobRequest.MinPriority))
        {
            errors.Add("SqsQueueOptions.Bands has no band starting at priority 1. Add one, so every priority has a queue.");
        }

        if (options.WaitTime < TimeSpan.Zero || options.WaitTime > TimeSpan.FromSeconds(20))
        {
            errors.Add($"SqsQueueOptions.WaitTime is {options.WaitTime}. Set it from 0 to 20 seconds (SQS's long-poll limit).");
        }

        if (options.MaxReceiveCount is { } maxReceives && maxReceives is < 1 or > 1000)
        {
            errors.Add($"SqsQueueOptions.MaxReceiveCount is {options.MaxReceiveCount}. Set it from 1 to 1000.");
        }

        if (options.MaxRetries < 0)
        {
            errors.Add($"SqsQueueOptions.MaxRetries is {options.MaxRetries}. Set it to 0 or more.");
        }

        if (options.LargePayloadThreshold is < 1 or > 262_144)
        {
            errors.Add($"SqsQueueOptions.LargePayloadThreshold is {options.LargePayloadThreshold}. Set it from 1 to 262,144 bytes (SQS's message limit).");
        }

        if (options.PayloadStorage is null)
        {
            errors.Add("SqsQueueOptions.PayloadStorage is null. Leave the default, or set it to a new S3StoreOptions.");
        }
        else if (options.PayloadStorage.Prefix is null)
        {
            errors.Add("SqsQueueOptions.PayloadStorage.Prefix is null. Set it to \"\" for none, or a prefix such as \"jobrunner/\".");
        }

        if (options.DeadLetterQueueName is { } dlq && string.IsNullOrWhiteSpace(dlq))
        {
            errors.Add("SqsQueueOptions.DeadLetterQueueName is blank. Set a queue name, or null to delete poison messages after logging them.");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    internal static void Region(List<string> errors, string optionsName, string? region, Uri? serviceUrl)
    {
        if (string.IsNullOrWhiteSpace(region))
        {
            errors.Add($"{optionsName}.Region is not set. Set it (e.g. \"eu-west-1\") or the AWS_REGION environment variable.");
        }
        else if (serviceUrl is null && !IsKnownRegion(region))
        {
            errors.Add($"{optionsName}.Region is '{region}', which is not an AWS region. Use a region's code such as \"us-east-1\" or \"eu-west-1\", or set {optionsName}.ServiceUrl for an emulator.");
        }
    }

    private static bool IsKnownRegion(string region)
    {
        foreach (var known in RegionEndpoint.EnumerableAllRegions)
        {
            if (string.Equals(known.SystemName, region, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>
/// Validates <see cref="WorkerOptions"/> at host start when the queue is SQS: the lease is a message's visibility
/// timeout there, which SQS limits to 12 hours, so a longer lease would fail every receive.
/// </summary>
internal sealed class SqsWorkerOptionsValidator : IValidateOptions<WorkerOptions>
{
    public ValidateOptionsResult Validate(string? name, WorkerOptions options)
        => options.LeaseDuration > SqsJobQueue.MaxVisibility
            ? ValidateOptionsResult.Fail($"WorkerOptions.LeaseDuration is {options.LeaseDuration}, but with the SQS queue the lease is a message's visibility timeout, which SQS limits to 12 hours. Set WorkerOptions.LeaseDuration to 12 hours or less: the heartbeat extends the lease while a job runs.")
            : ValidateOptionsResult.Success;
}

/// <summary>Validates <see cref="S3StoreOptions"/> at host start.</summary>
internal sealed class S3StoreOptionsValidator : IValidateOptions<S3StoreOptions>
{
    public ValidateOptionsResult Validate(string? name, S3StoreOptions options)
    {
        var errors = new List<string>();
        var label = string.IsNullOrEmpty(name) ? nameof(S3StoreOptions) : $"S3StoreOptions ({name})";
        SqsQueueOptionsValidator.Region(errors, label, options.Region, options.ServiceUrl);
        if (string.IsNullOrWhiteSpace(options.Bucket))
        {
            errors.Add($"{label}.Bucket is not set. Set it to the bucket's name.");
        }
        else if (options.Bucket.Length is < 3 or > 63 || options.Bucket.Any(static c => !(char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '-' or '.')))
        {
            errors.Add($"{label}.Bucket is '{options.Bucket}', which is not a valid bucket name. Use 3 to 63 lowercase letters, digits, '-' or '.'.");
        }

        if (options.Prefix is null)
        {
            errors.Add($"{label}.Prefix is null. Set it to \"\" for none, or a prefix such as \"jobrunner/\".");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
