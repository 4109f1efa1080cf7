using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace JobRunner.Events;

/// <summary>
/// The in-process event bus: copy-on-write subscriber array, one bounded channel per subscriber. Publishing never
/// blocks; a subscriber that falls more than <see cref="Capacity"/> events behind loses its oldest events, and learns it:
/// <see cref="SubscribeAsync"/> throws <see cref="JobEventsDroppedException"/> where the gap is, and
/// <see cref="Subscription.TryRead"/> reports how many were dropped before the event it returns.
/// </summary>
[DebuggerDisplay("Subscribers = {_subscribers.Length}")]
internal sealed class JobEventBus : IJobEventBus
{
    public const int Capacity = 16_384;

    private readonly Lock _lock = new();
    private volatile Subscription[] _subscribers = [];
    private volatile WaitingInterest? _waiting;
    private volatile int _watchedKinds;

    public bool HasSubscribers => _subscribers.Length != 0;

    public bool IsWatched(JobEventKind kind) => (_watchedKinds & (1 << (int)kind)) != 0;

    public bool IsWatched(JobEvent jobEvent)
    {
        ArgumentNullException.ThrowIfNull(jobEvent);
        if (!IsWatched(jobEvent.Kind))
        {
            return false;
        }

        foreach (var subscriber in _subscribers)
        {
            if (subscriber.Filter.Matches(jobEvent))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Gets who watches <see cref="JobEventKind.Waiting"/> events (a filter without kinds counts), so that the scheduler
    /// explains only those jobs, and nothing at all when this is <see langword="null"/>.
    /// </summary>
    public WaitingInterest? Waiting => _waiting;

    public void Publish(JobEvent jobEvent)
    {
        foreach (var subscriber in _subscribers)
        {
            if (subscriber.Filter.Matches(jobEvent))
            {
                subscriber.Writer.TryWrite(jobEvent);
            }
        }
    }

    public async IAsyncEnumerable<JobEvent> SubscribeAsync(JobEventFilter filter, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        using var subscription = Subscribe(filter);
        while (await subscription.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            while (subscription.TryRead(out var jobEvent, out var dropped))
            {
                if (dropped != 0)
                {
                    throw new JobEventsDroppedException(dropped);
                }

                yield return jobEvent;
            }
        }
    }

    /// <summary>Subscribes now (not at the first MoveNext), so that a caller can read a snapshot afterwards without a gap.</summary>
    public Subscription Subscribe(JobEventFilter filter)
    {
        ArgumentNullException.ThrowIfNull(filter);
        var subscription = new Subscription(this, filter);
        lock (_lock)
        {
            _subscribers = [.. _subscribers, subscription];
            Refresh();
        }

        return subscription;
    }

    private void Remove(Subscription subscription)
    {
        lock (_lock)
        {
            _subscribers = Array.FindAll(_subscribers, s => !ReferenceEquals(s, subscription));
            Refresh();
        }
    }

    private void Refresh()
    {
        var kinds = 0;
        foreach (var subscriber in _subscribers)
        {
            if (subscriber.Filter.Kinds is not { } filter)
            {
                kinds = -1;
                break;
            }

            foreach (var kind in filter)
            {
                kinds |= 1 << (int)kind;
            }
        }

        _watchedKinds = kinds;
        _waiting = WaitingInterest.Of(_subscribers);
    }

    /// <summary>The watchers of <see cref="JobEventKind.Waiting"/> events: every job, or only <see cref="Jobs"/>.</summary>
    internal sealed class WaitingInterest(bool all, JobId[] jobs)
    {
        public static readonly WaitingInterest Everyone = new(all: true, []);

        public bool All { get; } = all;

        public IReadOnlyList<JobId> Jobs { get; } = jobs;

        public static WaitingInterest? Of(Subscription[] subscribers)
        {
            List<JobId>? jobs = null;
            foreach (var subscriber in subscribers)
            {
                var filter = subscriber.Filter;
                if (filter.Kinds is not null && !filter.Kinds.Contains(JobEventKind.Waiting))
                {
                    continue;
                }

                if (filter.JobId is not { } id)
                {
                    return Everyone;
                }

                (jobs ??= []).Add(id);
            }

            return jobs is null ? null : new WaitingInterest(all: false, [.. jobs]);
        }
    }

    internal sealed class Subscription : IDisposable
    {
        private readonly JobEventBus _bus;
        private readonly Channel<JobEvent> _channel;

        // Events dropped since the reader last took one.
        private long _dropped;

        public Subscription(JobEventBus bus, JobEventFilter filter)
        {
            _bus = bus;
            Filter = filter;
            _channel = Channel.CreateBounded<JobEvent>(
                new BoundedChannelOptions(Capacity) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true },
                OnDropped);
        }

        public JobEventFilter Filter { get; }

        public ChannelWriter<JobEvent> Writer => _channel.Writer;

        /// <summary>Gets the reader, to wait for events (<see cref="ChannelReader{T}.WaitToReadAsync"/>); take them with <see cref="TryRead"/>.</summary>
        public ChannelReader<JobEvent> Reader => _channel.Reader;

        /// <summary>
        /// Takes the next buffered event, and how many events the bus dropped since the last one taken: those came
        /// before this event (a drop is of the oldest buffered event). A drop that happens while this reads, of the event
        /// right after this one, is reported now rather than at the next read: a gap is never reported late.
        /// </summary>
        public bool TryRead([MaybeNullWhen(false)] out JobEvent jobEvent, out long dropped)
        {
            if (!_channel.Reader.TryRead(out jobEvent))
            {
                dropped = 0;
                return false;
            }

            dropped = Volatile.Read(ref _dropped) == 0 ? 0 : Interlocked.Exchange(ref _dropped, 0);
            return true;
        }

        public void Dispose()
        {
            _bus.Remove(this);
            _channel.Writer.TryComplete();
        }

        private void OnDropped(JobEvent dropped) => Interlocked.Increment(ref _dropped);
    }
}
