namespace JobRunner;

/// <summary>
/// The one path job events take to watchers, metrics and the worker's cancellation listener. Stores publish state changes;
/// the worker publishes progress and log lines.
/// </summary>
public interface IJobEventBus
{
    /// <summary>Gets whether anyone listens. Publishers skip building events when nobody does.</summary>
    bool HasSubscribers { get; }

    /// <summary>Delivers <paramref name="jobEvent"/> to every matching subscriber. Never blocks.</summary>
    /// <param name="jobEvent">The event.</param>
    void Publish(JobEvent jobEvent);

    /// <summary>Streams the events that match <paramref name="filter"/> from now on, until <paramref name="cancellationToken"/> is signalled.</summary>
    /// <param name="filter">The filter.</param>
    /// <param name="cancellationToken">Ends the stream.</param>
    /// <returns>The events.</returns>
    IAsyncEnumerable<JobEvent> SubscribeAsync(JobEventFilter filter, CancellationToken cancellationToken);
}
