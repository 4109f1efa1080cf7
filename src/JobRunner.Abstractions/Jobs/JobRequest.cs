using System.Text.Json;

namespace JobRunner;

/// <summary>A request to run a workload on an input. Submit it with <see cref="IJobClient.SubmitAsync"/>.</summary>
public sealed record JobRequest
{
    /// <summary>The lowest priority.</summary>
    public const int MinPriority = 1;

    /// <summary>The highest priority.</summary>
    public const int MaxPriority = 10;

    /// <summary>The priority of a request that does not set one.</summary>
    public const int DefaultPriority = 5;

    /// <summary>The tenant of a request that does not set one.</summary>
    public const string DefaultTenant = "default";

    /// <summary>Creates a request for <paramref name="workload"/>.</summary>
    /// <param name="workload">The registered name of the workload to run.</param>
    public JobRequest(string workload)
    {
        Workload = workload;
    }

    /// <summary>Creates a request whose input is <paramref name="input"/> serialized as JSON.</summary>
    /// <typeparam name="TInput">The input type.</typeparam>
    /// <param name="workload">The registered name of the workload to run.</param>
    /// <param name="input">The input.</param>
    /// <param name="options">The serializer options; <see cref="JsonSerializerOptions.Web"/> when <see langword="null"/>.</param>
    /// <returns>The new request.</returns>
    public static JobRequest Create<TInput>(string workload, TInput input, JsonSerializerOptions? options = null)
        => new(workload) { Input = JsonSerializer.SerializeToUtf8Bytes(input, options ?? JsonSerializerOptions.Web) };

    /// <summary>Gets the registered name of the workload to run.</summary>
    public string Workload { get; init; }

    /// <summary>Gets the input, as UTF-8 JSON. Empty when the workload takes no input.</summary>
    public ReadOnlyMemory<byte> Input { get; init; }

    /// <summary>Gets the priority, from 1 (lowest) to 10 (highest).</summary>
    /// <value>The default value is <see cref="DefaultPriority"/> (5).</value>
    public int Priority { get; init; } = DefaultPriority;

    /// <summary>Gets the tenant the job belongs to: letters, digits, '-', '_' and '.', at most 63 characters.</summary>
    /// <value>The default value is <see cref="DefaultTenant"/>.</value>
    public string Tenant { get; init; } = DefaultTenant;

    /// <summary>Gets the dedupe key. While a job with this key is not finished, a submit with the same key returns that job.</summary>
    /// <value>The default value is <see langword="null"/>: no deduplication.</value>
    public string? DedupeKey { get; init; }

    /// <summary>
    /// Gets the concurrency key; jobs that share it are limited together by each worker's scheduler
    /// (<c>SchedulerOptions.ConcurrencyKeyLimits</c>). The limit holds per worker host, not across hosts.
    /// </summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public string? ConcurrencyKey { get; init; }

    /// <summary>Gets the earliest time the job may start. Until then it is <see cref="JobState.Scheduled"/>.</summary>
    /// <value>The default value is <see langword="null"/>: as soon as possible.</value>
    public DateTimeOffset? NotBefore { get; init; }

    /// <summary>Gets the time limit of each attempt; overrides the workload's.</summary>
    /// <value>The default value is <see langword="null"/>: the workload's timeout, if any.</value>
    public TimeSpan? Timeout { get; init; }

    /// <summary>Gets the retry policy; overrides the workload's.</summary>
    /// <value>The default value is <see langword="null"/>: the workload's policy.</value>
    public RetryPolicy? Retry { get; init; }

    /// <summary>Gets labels for filtering and affinity. Keys and values follow the rules of Kubernetes labels.</summary>
    /// <value>The default value is an empty dictionary.</value>
    public IReadOnlyDictionary<string, string> Labels { get; init; } = EmptyLabels.Instance;

    /// <summary>
    /// Gets which workers may run the job, as labels a worker advertises in <c>WorkerOptions.Labels</c>: a comma-separated
    /// list of terms, for example <c>gpu=true, zone=eu?, !spot</c>.
    /// <list type="bullet">
    /// <item><c>key=value</c> or <c>key</c> (any value): required. The job never runs on a worker without that label.</item>
    /// <item><c>key=value?</c> or <c>key?</c>: preferred (soft). A worker without it takes the job only after the
    /// scheduler's <c>PreferenceWait</c>, so that a worker with it gets the first chance.</item>
    /// <item><c>!key=value</c> or <c>!key</c>: avoided (hard). The job never runs on a worker that has that label.</item>
    /// </list>
    /// Keys and values follow the rules of <see cref="Labels"/>; spaces around terms are ignored. A malformed expression
    /// fails the submit with a <see cref="JobValidationException"/> that quotes the term.
    /// </summary>
    /// <value>The default value is <see langword="null"/>: any worker may run the job.</value>
    public string? Affinity { get; init; }

    /// <summary>Gets an id that ties this job to the request that caused it; it is put on the attempt's trace span.</summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public string? CorrelationId { get; init; }

    /// <summary>Gets the parent job, for workflows.</summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public JobId? ParentId { get; init; }
}

internal static class EmptyLabels
{
    public static readonly IReadOnlyDictionary<string, string> Instance = new Dictionary<string, string>(0);
}
