namespace JobRunner;

/// <summary>Settings of the worker host that leases and runs jobs.</summary>
public sealed class WorkerOptions
{
    /// <summary>Gets or sets the worker's id, unique in the fleet; it owns the leases it takes.</summary>
    /// <value>The default value is the machine name, the process id and a random suffix.</value>
    public string WorkerId { get; set; } = $"{Environment.MachineName}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..6]}";

    /// <summary>Gets or sets whether this host runs jobs. Turn it off on hosts that only submit and watch.</summary>
    /// <value>The default value is <see langword="true"/>.</value>
    public bool Enabled { get; set; } = true;

    /// <summary>Gets or sets how many attempts run at once: the capacity this worker advertises.</summary>
    /// <value>The default value is <see cref="Environment.ProcessorCount"/>.</value>
    public int Slots { get; set; } = Environment.ProcessorCount;

    /// <summary>
    /// Gets the labels this worker advertises, for <see cref="JobRequest.Affinity"/>: a job that requires a label runs only
    /// on workers that have it, one that avoids a label never runs on a worker that has it, and one that prefers a label
    /// waits <see cref="SchedulerOptions.PreferenceWait"/> before it runs on a worker without it. The worker's capacity is
    /// <see cref="Slots"/>. Keys and values follow the rules of Kubernetes labels, e.g. <c>gpu=true</c>, <c>zone=eu</c>.
    /// </summary>
    /// <value>The default value is an empty dictionary: only jobs without required labels run here.</value>
    public IDictionary<string, string> Labels { get; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>Gets or sets how long a lease lasts without a heartbeat. A crashed worker's jobs are taken over after it.</summary>
    /// <value>The default value is 30 seconds.</value>
    public TimeSpan LeaseDuration { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets how often the worker renews all its leases, in one batch.</summary>
    /// <value>The default value is 10 seconds. It must be less than half of <see cref="LeaseDuration"/>.</value>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Gets or sets how often the worker looks for expired leases of other workers and takes their jobs back.</summary>
    /// <value>The default value is 5 seconds.</value>
    public TimeSpan ReclaimInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Gets or sets how long a cancelled or timed-out attempt may take to stop before it is abandoned.</summary>
    /// <value>The default value is 10 seconds.</value>
    public TimeSpan CancellationGracePeriod { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Gets or sets how long running attempts get to checkpoint and finish when the host stops, after
    /// <see cref="WorkloadContext.CheckpointRequested"/> is signalled. Then they are cancelled and their leases released.
    /// </summary>
    /// <value>The default value is 10 seconds. Keep it below the host's shutdown timeout.</value>
    public TimeSpan ShutdownGracePeriod { get; set; } = TimeSpan.FromSeconds(10);
}
