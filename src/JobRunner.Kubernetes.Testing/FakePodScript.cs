namespace JobRunner.Kubernetes.Testing;

/// <summary>What the fake's job controller sees of a new pod when it asks <see cref="FakeKubernetesServer.PodBehavior"/> what to do.</summary>
/// <param name="Namespace">The namespace.</param>
/// <param name="JobName">The Job's name.</param>
/// <param name="PodName">The pod's name.</param>
/// <param name="Image">The container's image.</param>
/// <param name="Command">The container's command.</param>
/// <param name="Args">The container's arguments.</param>
/// <param name="Env">The container's environment.</param>
public sealed record FakePodRequest(
    string Namespace,
    string JobName,
    string PodName,
    string Image,
    IReadOnlyList<string> Command,
    IReadOnlyList<string> Args,
    IReadOnlyDictionary<string, string> Env);

/// <summary>How a fake pod behaves: pending → running → terminated, or stuck in a failure the cluster would keep retrying.</summary>
public sealed class FakePodScript
{
    /// <summary>Gets the exit code of the container.</summary>
    /// <value>The default value is 0.</value>
    public int ExitCode { get; init; }

    /// <summary>Gets the reason the container's terminated state carries (e.g. <c>OOMKilled</c>).</summary>
    /// <value>The default value is <see langword="null"/>: <c>Completed</c> for exit code 0, <c>Error</c> otherwise.</value>
    public string? TerminationReason { get; init; }

    /// <summary>Gets the lines the container writes when it starts.</summary>
    /// <value>The default value is empty.</value>
    public IReadOnlyList<string> Logs { get; init; } = [];

    /// <summary>Gets the lines the container writes when <see cref="RunUntil"/> completes, just before it exits.</summary>
    /// <value>The default value is empty.</value>
    public IReadOnlyList<string> FinalLogs { get; init; } = [];

    /// <summary>Gets a task the container runs until (it also ends when its Job is deleted or passes its deadline).</summary>
    /// <value>The default value is <see langword="null"/>: the container ends as soon as it has written its logs.</value>
    public Task? RunUntil { get; init; }

    /// <summary>Gets whether no node fits the pod: it stays Pending with PodScheduled=False, reason Unschedulable.</summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool Unschedulable { get; init; }

    /// <summary>Gets whether the image cannot be pulled: the container waits in ErrImagePull, then ImagePullBackOff.</summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool ImagePullFails { get; init; }

    /// <summary>Gets whether the image name is invalid: the container waits in InvalidImageName.</summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool InvalidImageName { get; init; }

    /// <summary>
    /// Gets why the Job controller cannot create the pod (as a PodSecurity or ResourceQuota refusal says): the Job stays
    /// active with no pod, and a FailedCreate event on the Job carries the reason.
    /// </summary>
    /// <value>The default value is <see langword="null"/>: the pod is created.</value>
    public string? PodCreationRefused { get; init; }

    /// <summary>
    /// Gets whether the Job is held back, as Kueue holds a Job it has not admitted: <c>spec.suspend</c> is true, the
    /// Job has the condition Suspended=True, and no pod is created (until the Job is deleted).
    /// </summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool Suspended { get; init; }

    /// <summary>
    /// Gets the reason the scheduled container waits in for good instead of starting, with a Warning event of the
    /// kubelet: e.g. <c>CreateContainerConfigError</c> (a missing Secret), <c>CreateContainerError</c>,
    /// <c>RunContainerError</c>, or <c>ContainerCreating</c> (a volume that cannot be mounted: event FailedMount).
    /// </summary>
    /// <value>The default value is <see langword="null"/>: the container starts.</value>
    public string? StuckWaiting { get; init; }

    /// <summary>
    /// Gets a task until which the pod's init containers run: the pod's <c>Initialized</c> condition is False
    /// (<c>ContainersNotInitialized</c>) and the container waits in <c>PodInitializing</c>; then Initialized is True.
    /// </summary>
    /// <value>The default value is <see langword="null"/>: no init containers.</value>
    public Task? InitializeUntil { get; init; }

    /// <summary>
    /// Gets the reason the pod's init container <c>init</c> waits in for good (the pod stays uninitialized and its container
    /// in <c>PodInitializing</c>), with a Warning event of the kubelet: e.g. <c>ImagePullBackOff</c>,
    /// <c>CrashLoopBackOff</c>, or <c>ContainerCreating</c> (a volume that cannot be mounted: event FailedMount).
    /// </summary>
    /// <value>The default value is <see langword="null"/>.</value>
    public string? InitStuckWaiting { get; init; }

    /// <summary>
    /// Gets a task until which the kubelet pulls the image: the container waits in <c>ContainerCreating</c> (the kubelet's
    /// reason for a pull), with a <c>Pulling</c> event; then a <c>Pulled</c> event, and the container starts.
    /// </summary>
    /// <value>The default value is <see langword="null"/>: the image is present on the node.</value>
    public Task? PullUntil { get; init; }

    /// <summary>Gets whether the kubelet evicts the pod once it runs (node pressure).</summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool Evicted { get; init; }

    /// <summary>Gets a script that succeeds and writes <paramref name="logs"/>.</summary>
    /// <param name="logs">The lines.</param>
    /// <returns>The script.</returns>
    public static FakePodScript Succeed(params string[] logs) => new() { Logs = logs };

    /// <summary>Gets a script that exits with <paramref name="exitCode"/>.</summary>
    /// <param name="exitCode">The exit code.</param>
    /// <param name="logs">The lines.</param>
    /// <returns>The script.</returns>
    public static FakePodScript Exit(int exitCode, params string[] logs) => new() { ExitCode = exitCode, Logs = logs };

    /// <summary>Gets a script whose container is killed by the OOM killer (exit code 137, reason OOMKilled).</summary>
    /// <returns>The script.</returns>
    public static FakePodScript OomKilled() => new() { ExitCode = 137, TerminationReason = "OOMKilled" };
}
