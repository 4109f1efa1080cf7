namespace JobRunner;

/// <summary>Why a process or container ended without success.</summary>
public enum ExitReason
{
    /// <summary>It exited with a non-zero code.</summary>
    NonZeroExit = 0,

    /// <summary>It was killed by a signal that JobRunner did not send (e.g. the OOM killer).</summary>
    Signal = 1,

    /// <summary>The cluster ran out of memory for it (OOMKilled).</summary>
    OutOfMemory = 2,

    /// <summary>It was evicted from its node.</summary>
    Evicted = 3,

    /// <summary>It could not be scheduled on any node in time.</summary>
    Unschedulable = 4,

    /// <summary>Its image could not be pulled, or its executable could not be started.</summary>
    StartFailed = 5,
}

/// <summary>A process or container workload ended without success. Carries the exit code and the reason.</summary>
public sealed class WorkloadExitException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="exitCode">The exit code; 128 + N when killed by signal N.</param>
    /// <param name="reason">Why it ended.</param>
    /// <param name="isTransient">Whether a retry may succeed.</param>
    /// <param name="message">A description, naming the fix where there is one.</param>
    public WorkloadExitException(int? exitCode, ExitReason reason, bool isTransient, string message)
        : base(message)
    {
        ExitCode = exitCode;
        Reason = reason;
        IsTransient = isTransient;
    }

    /// <summary>Gets the exit code, when the process got to exit; 128 + N when killed by signal N.</summary>
    public int? ExitCode { get; }

    /// <summary>Gets why it ended.</summary>
    public ExitReason Reason { get; }

    /// <inheritdoc />
    public override bool IsTransient { get; }
}
