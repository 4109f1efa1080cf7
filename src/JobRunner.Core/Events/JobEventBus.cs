using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace JobRunner.Events;

/// <summary>
/// The in-process event bus: copy-on-write subscriber array, one bounded channel per subscriber. Publishing never
/// blocks; a subscriber that falls more than <see cref="Capacity"/> events behind loses its oldest events.
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
        await foreach (var jobEvent in subscription.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            yield return jobEvent;
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
        private readonly Channel<JobEvent> _channel = Channel.CreateBounded<JobEvent>(new BoundedChannelOptions(Capacity)
        {
            FullMode = BoundedChannelFullMode.DropOldest,
            SingleReader = true,
        });

        public Subscription(JobEventBus bus, JobEventFilter filter)
        {
            _bus = bus;
            Filter = filter;
        }

        public JobEventFilter Filter { get; }

        public ChannelWriter<JobEvent> Writer => _channel.Writer;

        public ChannelReader<JobEvent> Reader => _channel.Reader;

        public void Dispose()
        {
            _bus.Remove(this);
            _channel.Writer.TryComplete();
        }
    }
}
