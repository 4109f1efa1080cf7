using JobRunner;
using JobRunner.Aws;
using JobRunner.Aws.S3;
using JobRunner.Aws.Sqs;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Chooses the AWS backends inside <c>services.AddJobRunner(runner => …)</c>.</summary>
public static class JobRunnerBuilderAwsExtensions
{
    private const string LogsName = "logs";
    private const string CheckpointsName = "checkpoints";

    /// <summary>
    /// Uses SQS as the job queue (dispatch only; job state stays in the job store). The queues are found (or created,
    /// when <see cref="SqsQueueOptions.CreateQueues"/> is set) at host start, so missing credentials, a wrong region or a
    /// missing queue fail the start with an error that names the fix.
    /// </summary>
    /// <param name="builder">The builder.</param>
    /// <param name="configure">Sets the region, queue names or URLs, bands, FIFO and the dead-letter queue.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> or <paramref name="configure"/> is <see langword="null"/>.</exception>
    public static JobRunnerBuilder UseSqsQueue(this JobRunnerBuilder builder, Action<SqsQueueOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        var services = builder.Services;
        services.AddOptions<SqsQueueOptions>().Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<SqsQueueOptions>, SqsQueueOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<WorkerOptions>, SqsWorkerOptionsValidator>());
        services.TryAddSingleton(static sp => AwsSetup.CreateQueue(
            sp.GetRequiredService<IOptions<SqsQueueOptions>>().Value,
            sp.GetService<TimeProvider>() ?? TimeProvider.System,
            sp.GetService<ILoggerFactory>()?.CreateLogger("JobRunner.Aws.Sqs")));
        AddStartStep(services, static (sp, ct) => sp.GetRequiredService<SqsJobQueue>().StartAsync(ct));
        return builder.UseQueue(static sp => sp.GetRequiredService<SqsJobQueue>());
    }

    /// <summary>Keeps job logs in S3: one object per appended batch of lines, per job and attempt, read page by page.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="configure">Sets the bucket, prefix, region and endpoint.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> or <paramref name="configure"/> is <see langword="null"/>.</exception>
    public static JobRunnerBuilder UseS3Logs(this JobRunnerBuilder builder, Action<S3StoreOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        var services = builder.Services;
        services.AddOptions<S3StoreOptions>(LogsName).Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<S3StoreOptions>, S3StoreOptionsValidator>());
        services.TryAddSingleton(static sp => new S3LogStore(AwsSetup.CreateBucket(sp.GetRequiredService<IOptionsMonitor<S3StoreOptions>>().Get(LogsName))));
        AddStartStep(services, static (sp, ct) => sp.GetRequiredService<S3LogStore>().Bucket.EnsureExistsAsync(sp.GetRequiredService<IOptionsMonitor<S3StoreOptions>>().Get(LogsName).CreateBucket, ct));
        return builder.UseLogStore(static sp => sp.GetRequiredService<S3LogStore>());
    }

    /// <summary>
    /// Keeps checkpoints in S3 instead of the job records (<see cref="JobRunnerBuilder.UseCheckpointStore"/>): one object
    /// per fence token, the newest valid one wins, and a writer with a stale lease can never replace a newer checkpoint.
    /// </summary>
    /// <param name="builder">The builder.</param>
    /// <param name="configure">Sets the bucket, prefix, region and endpoint.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> or <paramref name="configure"/> is <see langword="null"/>.</exception>
    public static JobRunnerBuilder UseS3Checkpoints(this JobRunnerBuilder builder, Action<S3StoreOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        var services = builder.Services;
        services.AddOptions<S3StoreOptions>(CheckpointsName).Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<S3StoreOptions>, S3StoreOptionsValidator>());
        services.TryAddSingleton(static sp => new S3CheckpointStore(AwsSetup.CreateBucket(sp.GetRequiredService<IOptionsMonitor<S3StoreOptions>>().Get(CheckpointsName))));
        builder.UseCheckpointStore(static sp => sp.GetRequiredService<S3CheckpointStore>());
        AddStartStep(services, static (sp, ct) => sp.GetRequiredService<S3CheckpointStore>().Bucket.EnsureExistsAsync(sp.GetRequiredService<IOptionsMonitor<S3StoreOptions>>().Get(CheckpointsName).CreateBucket, ct));
        return builder;
    }

    private static void AddStartStep(IServiceCollection services, Func<IServiceProvider, CancellationToken, Task> step)
    {
        services.AddSingleton(new AwsStartStep(step));
        // Registered while AddJobRunner's configure callback runs, so before the worker: the checks finish before it takes jobs.
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, AwsStartup>());
    }
}
