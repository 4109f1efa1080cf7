namespace JobRunner.Aws.Sqs;

/// <summary>
/// SQS batch calls (up to <see cref="MaxBatch"/> entries) from single calls, on the shared group commit
/// (<see cref="Batcher{TRequest, TResult}"/>): the first call starts a send, whatever arrives while it is in flight goes
/// out together in the next one, and up to <c>maxConcurrent</c> sends run at once when a full batch waits. With
/// <c>weigh</c>, a batch also closes before its entries weigh more than <c>maxWeight</c> (SQS refuses a whole
/// SendMessageBatch over 256 KiB). A send reports one error (or none) per entry, so a failed entry fails only its caller.
/// </summary>
internal sealed class Coalescer<T>
{
    public const int MaxBatch = 10;
    private readonly Batcher<T, bool> _batcher;

    public Coalescer(Func<T[], Task<Exception?[]>> send, int maxConcurrent, Func<T, long>? weigh = null, long maxWeight = long.MaxValue)
        => _batcher = new Batcher<T, bool>(batch => SendAsync(send, batch), MaxBatch, maxConcurrent, weigh, maxWeight);

    public Task AddAsync(T item) => _batcher.Enqueue(item);

    private static async Task SendAsync(Func<T[], Task<Exception?[]>> send, IReadOnlyList<Batcher<T, bool>.Item> batch)
    {
        var items = new T[batch.Count];
        for (var i = 0; i < items.Length; i++)
        {
            items[i] = batch[i].Request;
        }

        var results = await send(items).ConfigureAwait(false);
        for (var i = 0; i < items.Length; i++)
        {
            if (results[i] is { } error)
            {
                batch[i].TrySetException(error);
            }
            else
            {
                batch[i].TrySetResult(true);
            }
        }
    }
}
