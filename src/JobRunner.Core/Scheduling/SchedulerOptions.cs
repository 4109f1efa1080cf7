namespace JobRunner;

/// <summary>Settings of the scheduler: tenant weights, concurrency limits and how far it looks ahead in the queue.</summary>
public sealed class SchedulerOptions
{
    /// <summary>Gets the weight of each tier; a tenant's share of a priority band is proportional to its weight.</summary>
    /// <value>The default tiers are gold 4, silver 2 and bronze 1.</value>
    public IDictionary<string, int> TierWeights { get; } = new Dictionary<string, int>(StringComparer.Ordinal) { ["gold"] = 4, ["silver"] = 2, ["bronze"] = 1 };

    /// <summary>Gets the tier of each tenant; a tenant without one has <see cref="DefaultWeight"/>.</summary>
    public IDictionary<string, string> TenantTiers { get; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>Gets or sets the weight of a tenant without a tier.</summary>
    /// <value>The default value is 1.</value>
    public int DefaultWeight { get; set; } = 1;

    /// <summary>Gets the most attempts of each workload that run at once on this worker.</summary>
    public IDictionary<string, int> WorkloadLimits { get; } = new Dictionary<string, int>(StringComparer.Ordinal);

    /// <summary>Gets the most attempts of each tenant that run at once on this worker.</summary>
    public IDictionary<string, int> TenantLimits { get; } = new Dictionary<string, int>(StringComparer.Ordinal);

    /// <summary>
    /// Gets the most attempts that share a concurrency key and run at once on this worker; keys not listed use
    /// <see cref="DefaultConcurrencyKeyLimit"/>. Like every limit here it is enforced by each worker's scheduler, not
    /// across hosts: with a shared store (PostgreSQL) and N worker hosts, up to N times the limit run at once.
    /// </summary>
    public IDictionary<string, int> ConcurrencyKeyLimits { get; } = new Dictionary<string, int>(StringComparer.Ordinal);

    /// <summary>Gets or sets the limit, on this worker, of a concurrency key that is not listed (see <see cref="ConcurrencyKeyLimits"/>).</summary>
    /// <value>The default value is 1: jobs that share a key run one at a time on a worker (singleton execution per worker host, not across hosts).</value>
    public int DefaultConcurrencyKeyLimit { get; set; } = 1;

    /// <summary>Gets the rate limit of each workload: attempts started per second on this worker, with a burst.</summary>
    public IDictionary<string, RateLimit> WorkloadRates { get; } = new Dictionary<string, RateLimit>(StringComparer.Ordinal);

    /// <summary>Gets the rate limit of each tenant: attempts started per second on this worker, with a burst.</summary>
    public IDictionary<string, RateLimit> TenantRates { get; } = new Dictionary<string, RateLimit>(StringComparer.Ordinal);

    /// <summary>
    /// Gets or sets the starvation guard: a job that waited this long in the scheduler is promoted one priority band,
    /// and again after each further wait of this length, up to 10.
    /// </summary>
    /// <value>The default value is <see langword="null"/>: strict priorities, no promotion.</value>
    public TimeSpan? MaxWait { get; set; }

    /// <summary>
    /// Gets or sets how long a job that prefers labels (<c>zone=eu?</c> in <see cref="JobRequest.Affinity"/>) waits, from
    /// the time it was enqueued, before a worker without those labels takes it: a worker with them gets the first chance.
    /// Required and avoided labels are never relaxed.
    /// </summary>
    /// <value>The default value is 1 second.</value>
    public TimeSpan PreferenceWait { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Gets or sets how many ready jobs the scheduler holds to choose from, beyond the running ones. More gives better
    /// fairness when many tenants compete; the queue keeps the rest.
    /// </summary>
    /// <value>The default value is 256.</value>
    public int Lookahead { get; set; } = 256;
}

/// <summary>A token bucket: <paramref name="PerSecond"/> starts per second on average, up to <paramref name="Burst"/> at once.</summary>
/// <param name="PerSecond">The refill rate, at least 1E-10 (about one start every 317 years).</param>
/// <param name="Burst">The bucket size, 1 or more.</param>
public sealed record RateLimit(double PerSecond, int Burst = 1);
