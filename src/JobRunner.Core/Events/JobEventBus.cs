using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading.Channels;

namespace JobRunner.Events;

/// <summary>
/// The in-process event bus: one bounded channel per subscriber. Subscribers of one job (a filter with a
/// <see cref="JobEventFilter.JobId"/>, as <see cref="IJobClient.WatchAsync(JobId, CancellationToken)"/> makes) are kept by
/// job id, the others in a copy-on-write array, so that an event is offered to its own job's watchers and to the
/// subscribers without a job id only: ten thousand watched jobs do not make every event cost ten thousand filters, nor
/// every subscription copy the others. Publishing never blocks; a subscriber that falls more than
/// <see cref="Capacity"/> events behind loses its oldest events, and learns it: <see cref="SubscribeAsync"/> throws
/// <see cref="JobEventsDroppedException"/> where the gap is, and <see cref="Subscription.TryRead"/> reports how many
/// were dropped before the event it returns.
/// </summary>
[DebuggerDisplay("Subscribers = {_general.Length + _jobSubscribers}")]
internal sealed class JobEventBus : IJobEventBus
{
    public const int Capacity = 16_384;

    private const int WaitingBit = 1 << (int)JobEventKind.Waiting;

    private readonly Lock _lock = new();

    // Subscribers without a job id: offered every event. Replaced under the lock, read without it.
    private volatile Subscription[] _general = [];

    // Subscribers of one job, by its id: offered that job's events. Arrays replaced under the lock, read without it.
    private readonly ConcurrentDictionary<JobId, Subscription[]> _byJob = new();
    private volatile int _jobSubscribers;

    // Under the lock: how many subscribers take each kind (by bit), and how many take every kind.
    private readonly int[] _kindCounts = new int[32];
    private int _allKinds;
    private volatile int _watchedKinds;

    // Under the lock: who takes Waiting events, subscribers without a job id and, per job, the others. WaitingInterest
    // is built from them when it is read after a change, not at every subscription.
    private int _waitingEveryone;
    private readonly Dictionary<JobId, int> _waitingJobs = [];
    private volatile WaitingInterest? _waiting;
    private volatile bool _waitingChanged;

    public bool HasSubscribers => _general.Length != 0 || _jobSubscribers != 0;

    public bool IsWatched(JobEventKind kind) => (_watchedKinds & (1 << (int)kind)) != 0;

    public bool IsWatched(JobEvent jobEvent)
    {
        ArgumentNullException.ThrowIfNull(jobEvent);
        if (!IsWatched(jobEvent.Kind))
        {
            return false;
        }

        foreach (var subscriber in _general)
        {
            if (subscriber.Filter.Matches(jobEvent))
            {
                return true;
            }
        }

        if (_jobSubscribers != 0 && _byJob.TryGetValue(jobEvent.JobId, out var watchers))
        {
            foreach (var subscriber in watchers)
            {
                if (subscriber.Filter.Matches(jobEvent))
                {
                    return true;
                }
            }
        }

        return false;
    }

    /// <summary>
    /// Gets who watches <see cref="JobEventKind.Waiting"/> events (a filter without kinds counts), so that the scheduler
    /// explains only those jobs, and nothing at all when this is <see langword="null"/>.
    /// </summary>
    public WaitingInterest? Waiting
    {
        get
        {
            if (!_waitingChanged)
            {
                return _waiting;
            }

            lock (_lock)
            {
                if (_waitingChanged)
                {
                    _waiting = _waitingEveryone > 0 ? WaitingInterest.Everyone
                        : _waitingJobs.Count == 0 ? null
                        : new WaitingInterest(all: false, [.. _waitingJobs.Keys]);
                    _waitingChanged = false;
                }

                return _waiting;
            }
        }
    }

    public void Publish(JobEvent jobEvent)
    {
        foreach (var subscriber in _general)
        {
            if (subscriber.Filter.Matches(jobEvent))
            {
                subscriber.Writer.TryWrite(jobEvent);
            }
        }

        if (_jobSubscribers != 0 && _byJob.TryGetValue(jobEvent.JobId, out var watchers))
        {
            foreach (var subscriber in watchers)
            {
                if (subscriber.Filter.Matches(jobEvent))
                {
                    subscriber.Writer.TryWrite(jobEvent);
                }
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
            if (subscription.JobId is { } id)
            {
                _byJob[id] = _byJob.TryGetValue(id, out var watchers) ? [.. watchers, subscription] : [subscription];
                _jobSubscribers++;
            }
            else
            {
                _general = [.. _general, subscription];
            }

            Count(subscription, 1);
        }

        return subscription;
    }

    private void Remove(Subscription subscription)
    {
        lock (_lock)
        {
            if (subscription.JobId is { } id)
            {
                if (!_byJob.TryGetValue(id, out var watchers) || Array.IndexOf(watchers, subscription) < 0)
                {
                    return;
                }

                if (watchers.Length == 1)
                {
                    _byJob.TryRemove(id, out _);
                }
                else
                {
                    _byJob[id] = Array.FindAll(watchers, s => !ReferenceEquals(s, subscription));
                }

                _jobSubscribers--;
            }
            else
            {
                if (Array.IndexOf(_general, subscription) < 0)
                {
                    return;
                }

                _general = Array.FindAll(_general, s => !ReferenceEquals(s, subscription));
            }

            Count(subscription, -1);
        }
    }

    /// <summary>Counts <paramref name="subscription"/> in or out of the kinds and the Waiting interest (under the lock).</summary>
    private void Count(Subscription subscription, int delta)
    {
        var kinds = subscription.Kinds;
        if (kinds == -1)
        {
            _allKinds += delta;
        }
        else
        {
            for (var bits = (uint)kinds; bits != 0; bits &= bits - 1)
            {
                _kindCounts[BitOperations.TrailingZeroCount(bits)] += delta;
            }
        }

        var watched = 0;
        if (_allKinds > 0)
        {
            watched = -1;
        }
        else
        {
            for (var bit = 0; bit < _kindCounts.Length; bit++)
            {
                if (_kindCounts[bit] > 0)
                {
                    watched |= 1 << bit;
                }
            }
        }

        _watchedKinds = watched;
        if ((kinds & WaitingBit) != 0)
        {
            if (subscription.JobId is not { } id)
            {
                _waitingEveryone += delta;
            }
            else
            {
                ref var count = ref CollectionsMarshal.GetValueRefOrAddDefault(_waitingJobs, id, out _);
                count += delta;
                if (count == 0)
                {
                    _waitingJobs.Remove(id);
                }
            }

            _waitingChanged = true;
        }
    }

    /// <summary>The watchers of <see cref="JobEventKind.Waiting"/> events: every job, or only <see cref="Jobs"/>.</summary>
    internal sealed class WaitingInterest(bool all, JobId[] jobs)
    {
        public static readonly WaitingInterest Everyone = new(all: true, []);

        public bool All { get; } = all;

        public IReadOnlyList<JobId> Jobs { get; } = jobs;
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
            JobId = filter.JobId;
            if (filter.Kinds is { } kinds)
            {
                foreach (var kind in kinds)
                {
                    Kinds |= 1 << (int)kind;
                }
            }
            else
            {
                Kinds = -1;
            }

            _channel = Channel.CreateBounded<JobEvent>(
                new BoundedChannelOptions(Capacity) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true },
                OnDropped);
        }

        public JobEventFilter Filter { get; }

        /// <summary>Gets the filter's job, as it was at subscription: the subscription's place in the bus.</summary>
        public JobId? JobId { get; }

        /// <summary>Gets the filter's kinds as bits (-1 for all), as they were at subscription.</summary>
        public int Kinds { get; }

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
