namespace JobRunner;

/// <summary>
/// The one path job events take to watchers, metrics and the worker's cancellation listener. Stores publish state changes;
/// the worker publishes progress and log lines.
/// </summary>
public interface IJobEventBus
{
    /// <summary>Gets whether anyone listens. Publishers skip building events when nobody does.</summary>
    bool HasSubscribers { get; }

    /// <summary>
    /// Gets whether anyone listens for events of <paramref name="kind"/>. Publishers skip building events that no
    /// subscriber's filter would take (the worker's own cancellation listener does not make every state change watched).
    /// </summary>
    /// <param name="kind">The kind of event about to be built.</param>
    /// <returns><see langword="true"/> when a subscriber may take it; the default is <see cref="HasSubscribers"/>.</returns>
    bool IsWatched(JobEventKind kind) => HasSubscribers;

    /// <summary>
    /// Gets whether a subscriber's filter would take <paramref name="jobEvent"/>: for publishers that must do work to
    /// build an event's content (for example read log lines back from a database) only for the jobs someone watches.
    /// </summary>
    /// <param name="jobEvent">The event about to be built, with its kind, job, tenant and workload set.</param>
    /// <returns><see langword="true"/> when a subscriber may take it; the default is <see cref="IsWatched(JobEventKind)"/>.</returns>
    bool IsWatched(JobEvent jobEvent) => IsWatched(jobEvent?.Kind ?? throw new ArgumentNullException(nameof(jobEvent)));

    /// <summary>Delivers <paramref name="jobEvent"/> to every matching subscriber. Never blocks.</summary>
    /// <param name="jobEvent">The event.</param>
    void Publish(JobEvent jobEvent);

    /// <summary>
    /// Streams the events that match <paramref name="filter"/> from now on, until <paramref name="cancellationToken"/> is
    /// signalled. A bus that drops events for a subscriber that falls behind ends its stream with
    /// <see cref="JobEventsDroppedException"/> at the gap instead of skipping them silently, as the in-process bus does.
    /// </summary>
    /// <param name="filter">The filter.</param>
    /// <param name="cancellationToken">Ends the stream.</param>
    /// <returns>The events.</returns>
    IAsyncEnumerable<JobEvent> SubscribeAsync(JobEventFilter filter, CancellationToken cancellationToken);
}
