namespace JobRunner.Storage.Postgres;

/// <summary>
/// Group commit: concurrent callers' requests are collected while one statement is in flight, and the next flush writes
/// all of them in one round trip. Idle, a request goes out at once; under load, batches grow to <c>maxBatch</c>.
/// </summary>
internal sealed class Batcher<TRequest, TResult>
{
    private readonly Lock _lock = new();
    private readonly Func<IReadOnlyList<Item>, Task> _flush;
    private readonly int _maxBatch;
    private List<Item> _pending = [];
    private bool _flushing;

    public Batcher(Func<IReadOnlyList<Item>, Task> flush, int maxBatch)
    {
        _flush = flush;
        _maxBatch = maxBatch;
    }

    public Task<TResult> Enqueue(TRequest request)
    {
        var item = new Item(request);
        bool start;
        lock (_lock)
        {
            _pending.Add(item);
            start = !_flushing;
            _flushing = true;
        }

        if (start)
        {
            _ = Task.Run(FlushLoopAsync);
        }

        return item.Task;
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
                    _flushing = false;
                    return;
                }

                if (_pending.Count <= _maxBatch)
                {
                    batch = _pending;
                    _pending = [];
                }
                else
                {
                    batch = _pending.GetRange(0, _maxBatch);
                    _pending.RemoveRange(0, _maxBatch);
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
