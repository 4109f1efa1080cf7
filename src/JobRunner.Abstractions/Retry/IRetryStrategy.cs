namespace JobRunner;

/// <summary>Decides whether and when a failed job runs again. Waiting for a retry holds no execution slot.</summary>
public interface IRetryStrategy
{
    /// <summary>Gets the delay before the next attempt after a transient failure.</summary>
    /// <param name="failedAttempts">How many attempts of the job have failed, including this one (1 after the first failure).</param>
    /// <param name="exception">The failure.</param>
    /// <returns>The delay, or <see langword="null"/> to fail the job now.</returns>
    TimeSpan? GetRetryDelay(int failedAttempts, Exception exception);
}
