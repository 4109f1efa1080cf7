namespace JobRunner;

/// <summary>Settings of the local process engine, which runs <see cref="ContainerSpec"/>s as child processes.</summary>
public sealed class ProcessEngineOptions
{
    /// <summary>Gets or sets how long a process gets after SIGTERM before its process group is killed with SIGKILL.</summary>
    /// <value>The default value is 10 seconds.</value>
    public TimeSpan KillGracePeriod { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Gets the exit codes classified as transient (infrastructure).</summary>
    /// <value>The default set is 137 (SIGKILL) and 143 (SIGTERM), which a host or node shutdown causes.</value>
    public ISet<int> TransientExitCodes { get; } = new HashSet<int> { 137, 143 };

    /// <summary>Gets the exit codes classified as permanent, whatever <see cref="DefaultExitCodeKind"/> says.</summary>
    /// <value>The default set is 126 and 127 (the command cannot run or does not exist).</value>
    public ISet<int> PermanentExitCodes { get; } = new HashSet<int> { 126, 127 };

    /// <summary>Gets or sets the kind of a non-zero exit code in neither set.</summary>
    /// <value>The default value is <see cref="FailureKind.Permanent"/>: a program that reports failure fails the job.</value>
    public FailureKind DefaultExitCodeKind { get; set; } = FailureKind.Permanent;

    /// <summary>
    /// Gets or sets whether the process inherits the host's whole environment. When <see langword="false"/> it gets only
    /// PATH, HOME, LANG, LC_ALL, TZ, TMPDIR and USER from the host, so host secrets do not leak into jobs.
    /// </summary>
    /// <value>The default value is <see langword="false"/>.</value>
    public bool InheritEnvironment { get; set; }

    /// <summary>
    /// Gets or sets whether each process is started in a process group of its own (through <c>setsid</c>), so that
    /// signals reach its whole tree and whatever it leaves behind is killed when it exits. Turning it off saves the
    /// extra exec of <c>setsid</c> (about 1–3 ms per process): a stop (cancellation, timeout) then sends SIGTERM and
    /// SIGKILL to the main process and to its descendants as they stand when the stop begins (found through
    /// <c>/proc</c> on Linux; on macOS only the main process); descendants started during the stop, or left behind at a
    /// normal exit, may outlive the run. Without <c>/usr/bin/setsid</c> (e.g. macOS) there are no groups either way.
    /// </summary>
    /// <value>The default value is <see langword="true"/>.</value>
    public bool UseProcessGroups { get; set; } = true;

    /// <summary>Gets or sets the working directory of specs that set none.</summary>
    /// <value>The default value is <see langword="null"/>: the host's current directory.</value>
    public string? DefaultWorkingDirectory { get; set; }
}
