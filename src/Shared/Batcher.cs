// Compiled into each package that batches writes (PostgreSQL statements, SQS batch calls): one source, no public type.
namespace JobRunner;

/// <summary>
/// Group commit: concurrent callers' requests are collected while one write is in flight, and the next flush writes
/// all of them in one round trip. Idle, a request goes out at once; under load, batches grow to <c>maxBatch</c>.
/// Up to <c>maxInFlight</c> batches are written at once (each its own round trip), the second and later ones only
/// when a full batch is waiting. With a weight per request, a batch also closes before its weight passes
/// <c>maxWeight</c> (a request heavier than that goes alone), so that large requests under load do not make one
/// oversized write that fails them all.
/// </summary>
internal sealed class Batcher<TRequest, TResult>
{
    private readonly Lock _lock = new();
    private readonly Func<IReadOnlyList<Item>, Task> _flush;
    private readonly int _maxBatch;
    private readonly int _maxInFlight;
    private readonly Func<TRequest, long>? _weigh;
    private readonly long _maxWeight;
    private List<Item> _pending = [];
    private int _inFlight;

    public Batcher(Func<IReadOnlyList<Item>, Task> flush, int maxBatch, int maxInFlight = 1, Func<TRequest, long>? weigh = null, long maxWeight = long.MaxValue)
    {
        _flush = flush;
        _maxBatch = maxBatch;
        _maxInFlight = maxInFlight;
        _weigh = weigh;
        _maxWeight = maxWeight;
    }

    public Task<TResult> Enqueue(TRequest request)
    {
        var item = new Item(request);
        bool start;
        lock (_lock)
        {
            _pending.Add(item);

            // Idle, a request goes out at once. A further concurrent batch starts only for a full batch: partial ones
            // wait for the batch in flight, which keeps batches large (and commits few) under many small callers.
            start = _inFlight == 0 || (_inFlight < _maxInFlight && _pending.Count >= _maxBatch);
            if (start)
            {
                _inFlight++;
            }
        }

        if (start)
        {
            _ = Task.Run(FlushLoopAsync);
        }

        return item.Task;
    }

    /// <summary>
    /// Adds <paramref name="requests"/> together: no batch starts before the last is added, so those that fit go out in
    /// one batch (a caller's bulk write is not split because the first request went out at once, alone).
    /// </summary>
    /// <param name="requests">The requests.</param>
    /// <returns>Their results, in order.</returns>
    public Task<TResult>[] EnqueueMany(IReadOnlyList<TRequest> requests)
    {
        var tasks = new Task<TResult>[requests.Count];
        var starts = 0;
        lock (_lock)
        {
            for (var i = 0; i < tasks.Length; i++)
            {
                var item = new Item(requests[i]);
                _pending.Add(item);
                tasks[i] = item.Task;
            }

            // As Enqueue would have decided request by request: one batch when idle, more for full batches.
            while (_inFlight < _maxInFlight && (_inFlight == 0 || _pending.Count >= _maxBatch * (starts + 1)))
            {
                _inFlight++;
                starts++;
            }
        }

        for (var i = 0; i < starts; i++)
        {
            _ = Task.Run(FlushLoopAsync);
        }

        return tasks;
    }

    private async Task FlushLoopAsync()
    {
        while (true)
        {
            List<Item> batch;
            lock (_lock)
            {
                if (_pending.Count == 0)
                {
                    _inFlight--;
                    return;
                }

                var take = Take();
                if (take == _pending.Count)
                {
                    batch = _pending;
                    _pending = [];
                }
                else
                {
                    batch = _pending.GetRange(0, take);
                    _pending.RemoveRange(0, take);
                }
            }

            try
            {
                await _flush(batch).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                foreach (var item in batch)
                {
                    item.TrySetException(e);
                }
            }

            foreach (var item in batch)
            {
                // A flush must settle every item; one it forgot would hang its caller.
                item.TrySetException(new InvalidOperationException("The batch was written without a result for this request."));
            }
        }
    }

    /// <summary>How many of the pending requests the next batch takes (at least one); under the lock.</summary>
    private int Take()
    {
        var limit = Math.Min(_pending.Count, _maxBatch);
        if (_weigh is null)
        {
            return limit;
        }

        var weight = 0L;
        for (var i = 0; i < limit; i++)
        {
            weight += _weigh(_pending[i].Request);
            if (weight > _maxWeight && i > 0)
            {
                return i;
            }
        }

        return limit;
    }

    internal sealed class Item : TaskCompletionSource<TResult>
    {
        public Item(TRequest request)
            : base(TaskCreationOptions.RunContinuationsAsynchronously)
        {
            Request = request;
        }

        public TRequest Request { get; }
    }
}
