namespace JobRunner;

/// <summary>One try of a job under a lease.</summary>
public sealed record JobAttempt
{
    /// <summary>Gets the attempt number, starting at 1.</summary>
    public required int Number { get; init; }

    /// <summary>Gets the worker that held the lease.</summary>
    public required string WorkerId { get; init; }

    /// <summary>Gets the fence token of the attempt's lease.</summary>
    public required long FenceToken { get; init; }

    /// <summary>Gets when the attempt started.</summary>
    public required DateTimeOffset StartedAt { get; init; }

    /// <summary>Gets when the attempt ended; <see langword="null"/> while it runs.</summary>
    public DateTimeOffset? EndedAt { get; init; }

    /// <summary>Gets how the attempt ended; <see langword="null"/> while it runs.</summary>
    public AttemptOutcome? Outcome { get; init; }

    /// <summary>Gets the error message of a failed attempt.</summary>
    public string? Error { get; init; }

    /// <summary>Gets the full type name of the exception that failed the attempt.</summary>
    public string? ErrorType { get; init; }

    /// <summary>Gets the exit code, for engines that run processes or containers.</summary>
    public int? ExitCode { get; init; }
}
