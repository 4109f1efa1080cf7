namespace JobRunner.Aws.Sqs;

/// <summary>
/// Coalesces single calls into batches of up to <see cref="MaxBatch"/> without waiting for a timer: the first call starts
/// a send, and whatever arrives while it is in flight goes out together in the next one (natural batching). Up to
/// <c>maxConcurrent</c> sends run at once when a full batch is waiting.
/// </summary>
internal sealed class Coalescer<T>
{
    public const int MaxBatch = 10;
    private readonly Lock _lock = new();
    private readonly List<(T Item, TaskCompletionSource Done)> _pending = [];
    private readonly Func<T[], Task<Exception?[]>> _send;
    private readonly int _maxConcurrent;
    private int _sending;

    public Coalescer(Func<T[], Task<Exception?[]>> send, int maxConcurrent)
    {
        _send = send;
        _maxConcurrent = maxConcurrent;
    }

    public Task AddAsync(T item)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bool start;
        lock (_lock)
        {
            _pending.Add((item, done));
            start = _sending == 0 || (_pending.Count >= MaxBatch && _sending < _maxConcurrent);
            if (start)
            {
                _sending++;
            }
        }

        if (start)
        {
            _ = Task.Run(SendLoopAsync);
        }

        return done.Task;
    }

    private async Task SendLoopAsync()
    {
        while (true)
        {
            (T Item, TaskCompletionSource Done)[] batch;
            lock (_lock)
            {
                if (_pending.Count == 0)
                {
                    _sending--;
                    return;
                }

                var count = Math.Min(MaxBatch, _pending.Count);
                batch = new (T, TaskCompletionSource)[count];
                _pending.CopyTo(0, batch, 0, count);
                _pending.RemoveRange(0, count);
            }

            var items = new T[batch.Length];
            for (var i = 0; i < batch.Length; i++)
            {
                items[i] = batch[i].Item;
            }

            try
            {
                var results = await _send(items).ConfigureAwait(false);
                for (var i = 0; i < batch.Length; i++)
                {
                    if (results[i] is { } error)
                    {
                        batch[i].Done.TrySetException(error);
                    }
                    else
                    {
                        batch[i].Done.TrySetResult();
                    }
                }
            }
            catch (Exception e)
            {
                foreach (var (_, done) in batch)
                {
                    done.TrySetException(e);
                }
            }
        }
    }
}
