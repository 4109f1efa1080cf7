namespace JobRunner;

/// <summary>How a back-off grows between attempts.</summary>
public enum BackoffKind
{
    /// <summary>No retries.</summary>
    None = 0,

    /// <summary>The same delay every time.</summary>
    Fixed = 1,

    /// <summary>The delay grows by <see cref="RetryPolicy.BaseDelay"/> after each failure.</summary>
    Linear = 2,

    /// <summary>The delay doubles after each failure.</summary>
    Exponential = 3,
}

/// <summary>
/// A data-only retry policy: it can be stored with a job. Create one with <see cref="None"/>, <see cref="Fixed"/>,
/// <see cref="Linear"/> or <see cref="Exponential"/>.
/// </summary>
public sealed record RetryPolicy : IRetryStrategy
{
    private RetryPolicy(BackoffKind backoff, int maxAttempts, TimeSpan baseDelay, TimeSpan maxDelay, bool useJitter)
    {
        Backoff = backoff;
        MaxAttempts = maxAttempts;
        BaseDelay = baseDelay;
        MaxDelay = maxDelay;
        UseJitter = useJitter;
    }

    /// <summary>The largest delay when a policy sets none: one day.</summary>
    public static readonly TimeSpan DefaultMaxDelay = TimeSpan.FromDays(1);

    /// <summary>Gets a policy that never retries: the first failure fails the job.</summary>
    public static RetryPolicy None { get; } = new(BackoffKind.None, 1, TimeSpan.Zero, TimeSpan.Zero, useJitter: false);

    /// <summary>Gets how the delay grows.</summary>
    public BackoffKind Backoff { get; }

    /// <summary>Gets the maximum number of attempts, the first included.</summary>
    public int MaxAttempts { get; }

    /// <summary>Gets the first delay (and the step, for <see cref="BackoffKind.Linear"/>).</summary>
    public TimeSpan BaseDelay { get; }

    /// <summary>Gets the largest delay.</summary>
    public TimeSpan MaxDelay { get; }

    /// <summary>Gets whether the delay is spread at random over [delay/2, delay] so that retries of many jobs do not line up.</summary>
    public bool UseJitter { get; }

    /// <summary>Retries after the same <paramref name="delay"/> every time.</summary>
    /// <param name="delay">The delay, zero or more.</param>
    /// <param name="maxAttempts">The maximum number of attempts, 1 or more.</param>
    /// <returns>The policy.</returns>
    public static RetryPolicy Fixed(TimeSpan delay, int maxAttempts)
    {
        Validate(delay, maxAttempts);
        return new(BackoffKind.Fixed, maxAttempts, delay, delay, useJitter: false);
    }

    /// <summary>Retries after <paramref name="step"/>, 2×<paramref name="step"/>, 3×<paramref name="step"/>…, capped at <paramref name="maxDelay"/>.</summary>
    /// <param name="step">The first delay and the increment, zero or more.</param>
    /// <param name="maxAttempts">The maximum number of attempts, 1 or more.</param>
    /// <param name="maxDelay">The largest delay; <see langword="null"/> for <see cref="DefaultMaxDelay"/>.</param>
    /// <returns>The policy.</returns>
    public static RetryPolicy Linear(TimeSpan step, int maxAttempts, TimeSpan? maxDelay = null)
    {
        Validate(step, maxAttempts);
        return new(BackoffKind.Linear, maxAttempts, step, CheckMax(step, maxDelay), useJitter: false);
    }

    /// <summary>Retries after <paramref name="baseDelay"/>, 2×, 4×…, capped at <paramref name="maxDelay"/>, with jitter by default.</summary>
    /// <param name="baseDelay">The first delay, zero or more.</param>
    /// <param name="maxAttempts">The maximum number of attempts, 1 or more.</param>
    /// <param name="maxDelay">The largest delay; <see langword="null"/> for <see cref="DefaultMaxDelay"/>.</param>
    /// <param name="useJitter">Whether to spread each delay at random over [delay/2, delay].</param>
    /// <returns>The policy.</returns>
    public static RetryPolicy Exponential(TimeSpan baseDelay, int maxAttempts, TimeSpan? maxDelay = null, bool useJitter = true)
    {
        Validate(baseDelay, maxAttempts);
        return new(BackoffKind.Exponential, maxAttempts, baseDelay, CheckMax(baseDelay, maxDelay), useJitter);
    }

    /// <inheritdoc />
    public TimeSpan? GetRetryDelay(int failedAttempts, Exception exception)
    {
        if (Backoff == BackoffKind.None || failedAttempts >= MaxAttempts)
        {
            return null;
        }

        var n = Math.Max(1, failedAttempts);
        var ticks = Backoff switch
        {
            BackoffKind.Fixed => (double)BaseDelay.Ticks,
            BackoffKind.Linear => (double)BaseDelay.Ticks * n,
            _ => BaseDelay.Ticks * Math.Pow(2, Math.Min(n - 1, 62)),
        };
        ticks = Math.Min(ticks, MaxDelay.Ticks);
        if (UseJitter)
        {
            ticks = (ticks / 2) + (Random.Shared.NextDouble() * ticks / 2);
        }

        return ticks >= TimeSpan.MaxValue.Ticks ? TimeSpan.MaxValue : TimeSpan.FromTicks((long)ticks);
    }

    private static void Validate(TimeSpan delay, int maxAttempts)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(delay, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxAttempts, 1);
    }

    private static TimeSpan CheckMax(TimeSpan baseDelay, TimeSpan? maxDelay)
    {
        if (maxDelay is not { } max)
        {
            return baseDelay > DefaultMaxDelay ? baseDelay : DefaultMaxDelay;
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(max, baseDelay, nameof(maxDelay));
        return max;
    }
}
