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

    public bool HasSubscribers => _subscribers.Length != 0;

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
        }

        return subscription;
    }

    private void Remove(Subscription subscription)
    {
        lock (_lock)
        {
            _subscribers = Array.FindAll(_subscribers, s => !ReferenceEquals(s, subscription));
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
