using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using JobRunner.Aws.S3;
using Microsoft.Extensions.Logging;

namespace JobRunner.Aws.Sqs;

/// <summary>
/// An <see cref="IJobQueue"/> over SQS. The visibility timeout is the lease (extended by the worker's heartbeat with
/// ChangeMessageVisibilityBatch); enqueues and acknowledgements are coalesced into SendMessageBatch and
/// DeleteMessageBatch calls; one queue per priority band, long-polled together, up to 10 messages per call. Delays up to
/// 15 minutes are SQS's own; longer ones come back and are sent again with the rest of the delay. A message that
/// cannot be read goes to the dead-letter queue and never blocks the queue. Job state stays in the job store.
/// </summary>
[DebuggerDisplay("Bands = {_bands.Length}, Overflow = {_overflow.Count}")]
internal sealed class SqsJobQueue : IJobQueue, IAsyncDisposable
{
    /// <summary>SQS's longest per-message delay.</summary>
    internal static readonly TimeSpan MaxDelay = TimeSpan.FromMinutes(15);

    /// <summary>SQS's longest visibility timeout.</summary>
    internal static readonly TimeSpan MaxVisibility = TimeSpan.FromHours(12);

    /// <summary>SQS's longest message retention period (14 days), set on the queues JobRunner creates.</summary>
    internal const string MaxRetentionSeconds = "1209600";

    /// <summary>SQS's largest SendMessageBatch: the bodies (and message attributes) of all its entries together.</summary>
    internal const int MaxBatchBytes = 262_144;

    /// <summary>How many receives may be in flight on one band at once (one per waiting consumer).</summary>
    private const int MaxPollsPerBand = 8;

    private readonly SqsClient _client;
    private readonly SqsQueueOptions _options;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly S3Bucket? _payloads;
    private readonly Band[] _bands;
    // The newest delivery of each message with its body in S3, by the body's key (see ForgetPayload).
    private readonly Dictionary<string, SqsReceipt> _payloadReceipts = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();
    private readonly List<QueuedJob> _overflow = [];
    private readonly CancellationTokenSource _disposed = new();
    private readonly CancellationToken _stopping;
    private readonly SharedStart _started;
    private string? _deadLetterUrl;
    private int _disposeState;
    private int _waiting;

    public SqsJobQueue(SqsClient client, SqsQueueOptions options, TimeProvider time, ILogger logger, S3Bucket? payloads)
    {
        _client = client;
        _options = options;
        _time = time;
        _logger = logger;
        _payloads = payloads;
        var bands = options.Bands.Count == 0 ? [new SqsPriorityBand(JobRequest.MinPriority, options.QueueName)] : options.Bands.OrderByDescending(static b => b.MinPriority).ToArray();
        _bands = new Band[bands.Length];
        for (var i = 0; i < bands.Length; i++)
        {
            var band = new Band(i, bands[i].MinPriority, QueueName(bands[i].QueueName));
            band.Sends = new Coalescer<SendEntry>(entries => SendBatchAsync(band, entries), maxConcurrent: 4, static e => Encoding.UTF8.GetByteCount(e.Body), MaxBatchBytes);
            band.Deletes = new Coalescer<string>(handles => DeleteBatchAsync(band, handles), maxConcurrent: 4);
            _bands[i] = band;
        }

        _stopping = _disposed.Token;
        _started = new SharedStart(() => Task.Run(() => ResolveQueuesAsync(_stopping), CancellationToken.None));
    }

    /// <summary>Gets the HTTP calls made so far (for the benchmark).</summary>
    internal long ApiCalls => _client.Calls;

    internal IReadOnlyList<string?> QueueUrls => Array.ConvertAll(_bands, static b => b.Url);

    internal string? DeadLetterUrl => _deadLetterUrl;

    /// <summary>
    /// Finds (or creates, when allowed) every queue; fails with an error that names the fix. Callers share one attempt;
    /// a failed one is not kept, so the next call (the host's next start, the worker's next dequeue) tries again.
    /// </summary>
    public Task StartAsync(CancellationToken cancellationToken) => _started.WaitAsync(cancellationToken);

    public async ValueTask EnqueueAsync(QueuedJob job, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(job);
        await StartAsync(cancellationToken).ConfigureAwait(false);
        var body = SqsMessage.Encode(job);
        var now = _time.GetUtcNow();
        var delay = job.DueAt is { } due && due > now ? due - now : TimeSpan.Zero;
        await SendAsync(BandOf(job.Priority), job, body, delay, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask<int> DequeueAsync(Memory<QueuedJob> buffer, TimeSpan visibility, CancellationToken cancellationToken)
    {
        if (buffer.IsEmpty)
        {
            throw new ArgumentException("The buffer must hold at least one job.", nameof(buffer));
        }

        if (visibility <= TimeSpan.Zero || visibility > MaxVisibility)
        {
            throw new ArgumentOutOfRangeException(nameof(visibility), visibility, "SQS visibility timeouts are from 1 second to 12 hours.");
        }

        await StartAsync(cancellationToken).ConfigureAwait(false);
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            List<QueuedJob>? release = null;
            var taken = TakeOverflow(buffer.Span, visibility, ref release);
            if (release is not null)
            {
                // In the background: the jobs taken must not spend their visibility waiting for it.
                _ = ReleaseAsync(release);
            }

            if (taken > 0)
            {
                return taken;
            }

            // Long polls on every band at once, one more per waiting caller (up to MaxPollsPerBand), so that several
            // consumers keep several receives in flight. A poll still running when this call returns keeps going, and
            // what it brings back is handed out first next time (if enough of its visibility is left). The buffer's
            // size is shared among the bands, so that what the other bands bring while one answers stays small.
            var max = Math.Min(Coalescer<string>.MaxBatch, Math.Max(1, (buffer.Length + _bands.Length - 1) / _bands.Length));
            var polls = new List<Task>();
            lock (_lock)
            {
                _waiting++;
                foreach (var band in _bands)
                {
                    if (band.Polls.Count < Math.Min(_waiting, MaxPollsPerBand))
                    {
                        band.Polls.Add(Task.Run(() => PollAsync(band, max, visibility, _options.WaitTime), CancellationToken.None));
                    }

                    polls.AddRange(band.Polls);
                }
            }

            try
            {
                await Task.WhenAny(polls).WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                lock (_lock)
                {
                    _waiting--;
                }
            }
        }
    }

    /// <summary>One receive on every band without waiting (for tests): how many ready jobs it brought.</summary>
    internal async Task<int> PollOnceAsync(TimeSpan visibility, CancellationToken cancellationToken)
    {
        await StartAsync(cancellationToken).ConfigureAwait(false);
        int before;
        lock (_lock)
        {
            before = _overflow.Count;
        }

        foreach (var band in _bands)
        {
            await PollAsync(band, Coalescer<string>.MaxBatch, visibility, TimeSpan.Zero).ConfigureAwait(false);
        }

        lock (_lock)
        {
            return _overflow.Count - before;
        }
    }

    public async ValueTask AcknowledgeAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        if (jobs.Count == 0)
        {
            return;
        }

        if (jobs.Count == 1 && jobs[0].Receipt is SqsReceipt { PayloadKey: null } only)
        {
            // One job per call is how the worker acknowledges: no list, no WhenAll.
            ForgetOverflow(jobs[0]);
            var delete = _bands[only.Band].Deletes.AddAsync(only.Handle);
            await (cancellationToken.CanBeCanceled ? delete.WaitAsync(cancellationToken) : delete).ConfigureAwait(false);
            return;
        }

        var deletes = new List<Task>(jobs.Count);
        foreach (var job in jobs)
        {
            if (job.Receipt is SqsReceipt receipt)
            {
                ForgetOverflow(job);
                deletes.Add(_bands[receipt.Band].Deletes.AddAsync(receipt.Handle));
                if (receipt.PayloadKey is { } key && _payloads is not null && ForgetPayload(receipt))
                {
                    deletes.Add(_payloads.DeleteAsync(key, cancellationToken));
                }
            }
        }

        await Task.WhenAll(deletes).WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    public ValueTask ReturnAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        foreach (var job in jobs)
        {
            // Given back: whoever receives the message next (here or elsewhere) holds the body.
            if (job?.Receipt is SqsReceipt { PayloadKey: not null } receipt)
            {
                _ = ForgetPayload(receipt);
            }
        }

        return ChangeVisibilityAsync(jobs, TimeSpan.Zero, cancellationToken);
    }

    public ValueTask ExtendAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        if (visibility < TimeSpan.Zero || visibility > MaxVisibility)
        {
            throw new ArgumentOutOfRangeException(nameof(visibility), visibility, "SQS visibility timeouts are from 0 to 12 hours.");
        }

        return ChangeVisibilityAsync(jobs, visibility, cancellationToken);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposeState, 1) != 0)
        {
            return;
        }

        await _disposed.CancelAsync().ConfigureAwait(false);
        List<Task> polls = [];
        lock (_lock)
        {
            foreach (var band in _bands)
            {
                polls.AddRange(band.Polls);
            }
        }

        await Task.WhenAll(polls).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);

        // Deliveries received but never handed out go back at once instead of waiting out their visibility.
        QueuedJob[] unclaimed;
        lock (_lock)
        {
            unclaimed = [.. _overflow];
            _overflow.Clear();
        }

        if (unclaimed.Length > 0)
        {
            try
            {
                await ChangeVisibilityAsync(unclaimed, TimeSpan.Zero, CancellationToken.None).ConfigureAwait(false);
            }
            catch (AwsServiceException e)
            {
                Log.ReturnFailed(_logger, unclaimed.Length, e);
            }
        }

        _client.Dispose();
        _payloads?.Dispose();
        _disposed.Dispose();
    }

    private static string QueueName(string configured) => configured;

    private Band BandOf(int priority)
    {
        foreach (var band in _bands)
        {
            if (priority >= band.MinPriority)
            {
                return band;
            }
        }

        return _bands[^1];
    }

    private async Task SendAsync(Band band, QueuedJob job, string body, TimeSpan delay, CancellationToken cancellationToken)
    {
        string? payloadKey = null;
        if (Encoding.UTF8.GetByteCount(body) > _options.LargePayloadThreshold)
        {
            if (_payloads is null)
            {
                throw new AwsServiceException("sqs", "MessageTooLong", null, transient: false, $"Job {job.Id}: the message is larger than SqsQueueOptions.LargePayloadThreshold ({_options.LargePayloadThreshold} bytes). Set SqsQueueOptions.LargePayloadBucket to keep large bodies in S3.");
            }

            payloadKey = _payloads.Prefix + "payloads/" + job.Id.ToString() + "/" + Guid.CreateVersion7(_time.GetUtcNow()).ToString("N");
            await _payloads.PutAsync(payloadKey, Encoding.UTF8.GetBytes(body), cancellationToken).ConfigureAwait(false);
            body = SqsMessage.EncodePointer(payloadKey);
        }

        var entry = new SendEntry(body, delay, job.Tenant, job.Id, job.DueAt is not null && delay > TimeSpan.Zero, _time.GetUtcNow().ToUnixTimeMilliseconds());
        await band.Sends.AddAsync(entry).WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Hands out received deliveries, highest priority first. A delivery with less than half of
    /// <paramref name="visibility"/> left (it waited here while another band's poll answered) goes to
    /// <paramref name="release"/> to be made visible again, so that it is received afresh with a full visibility: the
    /// worker's first heartbeat (at most half the lease away) would come too late for it. One already lapsed is dropped
    /// (SQS delivers it again).
    /// </summary>
    private int TakeOverflow(Span<QueuedJob> buffer, TimeSpan visibility, ref List<QueuedJob>? release)
    {
        lock (_lock)
        {
            Task? faulted = null;
            foreach (var band in _bands)
            {
                for (var i = band.Polls.Count - 1; i >= 0; i--)
                {
                    if (band.Polls[i].IsCompleted)
                    {
                        faulted ??= band.Polls[i].IsFaulted ? band.Polls[i] : null;
                        band.Polls.RemoveAt(i);
                    }
                }
            }

            // A failed receive surfaces to one caller (the worker logs it and tries again); what other polls brought stays.
            faulted?.GetAwaiter().GetResult();

            if (_overflow.Count == 0)
            {
                return 0;
            }

            // Highest priority first, oldest first within a priority.
            _overflow.Sort(static (a, b) => a.Priority != b.Priority ? b.Priority.CompareTo(a.Priority) : a.EnqueuedAt.CompareTo(b.EnqueuedAt));
            var now = _time.GetUtcNow();
            var taken = 0;
            var kept = 0;
            for (var i = 0; i < _overflow.Count; i++)
            {
                var job = _overflow[i];
                var receipt = (SqsReceipt)job.Receipt!;
                // Lapsed for sure counts from when the receive was sent; what is left after waiting here, from when its
                // answer arrived (a long poll's wait before it answers is no time spent here).
                var lapsed = receipt.ReceivedAt + receipt.Visibility <= now;
                if (lapsed || receipt.ArrivedAt + receipt.Visibility - now < visibility / 2)
                {
                    // Not handed out: whoever receives the message next holds its S3 body (if any).
                    ForgetPayloadLocked(receipt);
                    if (!lapsed)
                    {
                        (release ??= []).Add(job);
                    }

                    continue;
                }

                if (taken < buffer.Length)
                {
                    buffer[taken++] = job;
                }
                else
                {
                    _overflow[kept++] = job;
                }
            }

            _overflow.RemoveRange(kept, _overflow.Count - kept);
            return taken;
        }
    }

    /// <summary>Makes deliveries that were not handed out visible again; a failure only leaves them to lapse.</summary>
    private async Task ReleaseAsync(List<QueuedJob> jobs)
    {
        try
        {
            await ChangeVisibilityAsync(jobs, TimeSpan.Zero, _stopping).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // Run in the background: nothing else observes it.
            Log.ReturnFailed(_logger, jobs.Count, e);
        }
    }

    private void ForgetOverflow(QueuedJob job)
    {
        lock (_lock)
        {
            // Usually empty: a job is acknowledged after it was handed out. Compare references, not the record's fields.
            for (var i = 0; i < _overflow.Count; i++)
            {
                if (ReferenceEquals(_overflow[i], job))
                {
                    _overflow.RemoveAt(i);
                    return;
                }
            }
        }
    }

    private async Task PollAsync(Band band, int max, TimeSpan visibility, TimeSpan wait)
    {
        var receivedAt = _time.GetUtcNow();
        using var response = await _client.SendAsync(
            "ReceiveMessage",
            (band.Url!, max, visibility, wait),
            static (w, s) =>
            {
                w.WriteString("QueueUrl", s.Item1);
                w.WriteNumber("MaxNumberOfMessages", s.max);
                w.WriteNumber("VisibilityTimeout", (long)Math.Ceiling(s.visibility.TotalSeconds));
                w.WriteNumber("WaitTimeSeconds", (long)Math.Ceiling(s.Item4.TotalSeconds));
                w.WriteStartArray("MessageSystemAttributeNames");
                w.WriteStringValue("ApproximateReceiveCount");
                w.WriteStringValue("SentTimestamp");
                w.WriteEndArray();
            },
            _stopping).ConfigureAwait(false);
        var arrivedAt = _time.GetUtcNow();

        if (!response.RootElement.TryGetProperty("Messages", out var messages) || messages.ValueKind != JsonValueKind.Array)
        {
            return;
        }

        var ready = new List<QueuedJob>(messages.GetArrayLength());
        foreach (var message in messages.EnumerateArray())
        {
            var handle = message.GetProperty("ReceiptHandle").GetString()!;
            var body = message.TryGetProperty("Body", out var b) ? b.GetString() ?? "" : "";
            var valid = SqsMessage.TryDecode(body, out var decoded, out var pointer, out var problem);
            if (valid && pointer is null && !(decoded.DueAt is { } due && due - receivedAt > TimeSpan.FromSeconds(1)))
            {
                // The common case, without a task: a dispatch body that is due.
                ready.Add(decoded with { Receipt = new SqsReceipt(band.Index, handle, receivedAt, visibility, PayloadKey: null, arrivedAt) });
                continue;
            }

            var messageId = message.TryGetProperty("MessageId", out var id) ? id.GetString() : null;
            try
            {
                if (await ReadAsync(band, handle, body, messageId, (receivedAt, arrivedAt), SentAt(message), visibility, problem, decoded, pointer).ConfigureAwait(false) is { } job)
                {
                    ready.Add(job);
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // This one message could not be handled (S3 or SQS failed): it becomes visible again after its timeout.
                Log.MessageFailed(_logger, messageId, e);
            }
        }

        lock (_lock)
        {
            _overflow.AddRange(ready);
        }
    }

    /// <summary>
    /// Turns a message the receive already decoded into a ready job: poison (<c>poison</c> says why) goes to the
    /// dead-letter queue, a body in S3 (<c>pointer</c>) is fetched, a job not due yet waits longer.
    /// </summary>
    private async Task<QueuedJob?> ReadAsync(Band band, string handle, string body, string? messageId, (DateTimeOffset Sent, DateTimeOffset Arrived) receive, DateTimeOffset? sentAt, TimeSpan visibility, string? poison, QueuedJob job, string? pointer)
    {
        var receivedAt = receive.Sent;
        var ct = _stopping;
        if (poison is not null)
        {
            await DeadLetterAsync(band, handle, body, messageId, poison, ct).ConfigureAwait(false);
            return null;
        }

        if (pointer is not null)
        {
            if (_payloads is null)
            {
                // A readable message that this process is not set up for (another host has a payload bucket): a
                // configuration error, not poison. Left alone, it comes back after its visibility timeout.
                Log.PayloadBucketMissing(_logger, messageId, band.Url!, pointer);
                return null;
            }

            var stored = await _payloads.GetAsync(pointer, ct).ConfigureAwait(false);
            string? problem = null;
            if (stored is null || !SqsMessage.TryDecode(Encoding.UTF8.GetString(stored), out job, out _, out problem) || job is null)
            {
                await DeadLetterAsync(band, handle, body, messageId, problem ?? $"the S3 body {pointer} is missing", ct).ConfigureAwait(false);
                return null;
            }
        }

        var now = _time.GetUtcNow();
        if (job.DueAt is { } due && due - now > TimeSpan.FromSeconds(1))
        {
            // Not due yet (a delay longer than SQS's 15 minutes): send it again with the rest of the delay. A FIFO queue
            // has no per-message delays: a young message is kept invisible (in flight) until it is due or for as long
            // as SQS allows; one older than FifoRefreshAge is sent again (visible at once, and held by whoever receives
            // it) and deleted, so that SQS's retention period, which counts from the send, never removes it.
            var rest = due - now;
            if (_options.Fifo && (sentAt is null || now - sentAt.Value < FifoRefreshAge))
            {
                await ChangeVisibilityAsync(band, [handle], FifoHold(rest, receivedAt, now), ct).ConfigureAwait(false);
            }
            else
            {
                // Deduplicated by the message it replaces (its send time): if the delete below fails, the old message
                // comes back and is sent again, and SQS (FIFO) drops that second copy within its five minutes.
                var entry = new SendEntry(body, rest, job.Tenant, job.Id, Delayed: true, (sentAt ?? now).ToUnixTimeMilliseconds());
                await band.Sends.AddAsync(entry).ConfigureAwait(false);
                await band.Deletes.AddAsync(handle).ConfigureAwait(false);
            }

            return null;
        }

        var receipt = new SqsReceipt(band.Index, handle, receivedAt, visibility, pointer, receive.Arrived);
        if (pointer is not null)
        {
            lock (_lock)
            {
                _payloadReceipts[pointer] = receipt;
            }
        }

        return job with { Receipt = receipt };
    }

    /// <summary>
    /// Stops tracking <paramref name="receipt"/> as its message's newest delivery here, and says whether acknowledging it
    /// may delete its S3 body: only for the newest delivery of the message this process received. An older one (the worker keeps the newer delivery of a job delivered twice, and acknowledges
    /// the older) shares the body with the message still in flight; SQS accepts a delete with its stale handle and deletes
    /// nothing, so the body must stay.
    /// </summary>
    private bool ForgetPayload(SqsReceipt receipt)
    {
        lock (_lock)
        {
            return ForgetPayloadLocked(receipt);
        }
    }

    private bool ForgetPayloadLocked(SqsReceipt receipt)
    {
        if (receipt.PayloadKey is not { } key)
        {
            return false;
        }

        if (_payloadReceipts.TryGetValue(key, out var newest) && !ReferenceEquals(newest, receipt))
        {
            return false;
        }

        _payloadReceipts.Remove(key);
        return true;
    }

    /// <summary>
    /// How old (from its send) a FIFO message that is not due yet may be and still be held invisible. SQS deletes a message
    /// when its retention period has passed since the send, in flight or not, so an older one is sent again (a fresh
    /// copy, whose age starts over) and deleted instead: a held message is at most this plus 12 hours old.
    /// </summary>
    internal static readonly TimeSpan FifoRefreshAge = TimeSpan.FromHours(1);

    private static DateTimeOffset? SentAt(JsonElement message)
        => message.TryGetProperty("Attributes", out var attributes) && attributes.ValueKind == JsonValueKind.Object
            && attributes.TryGetProperty("SentTimestamp", out var sent) && sent.ValueKind == JsonValueKind.String
            && long.TryParse(sent.GetString(), NumberStyles.None, CultureInfo.InvariantCulture, out var ms)
            ? DateTimeOffset.FromUnixTimeMilliseconds(ms)
            : null;

    /// <summary>
    /// How long a FIFO message that is not due yet stays invisible: the rest of its wait, at most what SQS allows. SQS
    /// counts a message's 12 hours of visibility from its receive, and refuses (per entry, with HTTP 200) a change that
    /// reaches past them, which would leave the message to come back every visibility timeout; a minute is kept spare.
    /// </summary>
    internal static TimeSpan FifoHold(TimeSpan rest, DateTimeOffset receivedAt, DateTimeOffset now)
    {
        var allowed = MaxVisibility - (now - receivedAt) - TimeSpan.FromMinutes(1);
        return rest < allowed ? rest : allowed > TimeSpan.Zero ? allowed : TimeSpan.Zero;
    }

    private async Task DeadLetterAsync(Band band, string handle, string body, string? messageId, string problem, CancellationToken cancellationToken)
    {
        Log.PoisonMessage(_logger, messageId, band.Url!, problem, _deadLetterUrl);
        if (_deadLetterUrl is { } dlq)
        {
            using var _ = await _client.SendAsync(
                "SendMessage",
                (dlq, body, problem, _options.Fifo, messageId ?? handle),
                static (w, s) =>
                {
                    w.WriteString("QueueUrl", s.dlq);
                    w.WriteString("MessageBody", s.body.Length == 0 ? "(empty)" : s.body);
                    if (s.Fifo)
                    {
                        w.WriteString("MessageGroupId", "poison");
                        w.WriteString("MessageDeduplicationId", DedupId(s.Item5));
                    }

                    w.WriteStartObject("MessageAttributes");
                    w.WriteStartObject("jobrunner-poison-reason");
                    w.WriteString("DataType", "String");
                    w.WriteString("StringValue", s.problem.Length > 1000 ? s.problem[..1000] : s.problem);
                    w.WriteEndObject();
                    w.WriteEndObject();
                },
                cancellationToken).ConfigureAwait(false);
        }

        await band.Deletes.AddAsync(handle).ConfigureAwait(false);
    }

    private async ValueTask ChangeVisibilityAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken)
    {
        if (jobs.Count == 0)
        {
            return;
        }

        var byBand = new List<string>?[_bands.Length];
        foreach (var job in jobs)
        {
            if (job.Receipt is SqsReceipt receipt)
            {
                (byBand[receipt.Band] ??= []).Add(receipt.Handle);
            }
        }

        var calls = new List<Task>();
        for (var i = 0; i < byBand.Length; i++)
        {
            if (byBand[i] is { } handles)
            {
                calls.Add(ChangeVisibilityAsync(_bands[i], handles, visibility, cancellationToken));
            }
        }

        await Task.WhenAll(calls).ConfigureAwait(false);
    }

    private async Task ChangeVisibilityAsync(Band band, List<string> handles, TimeSpan visibility, CancellationToken cancellationToken)
    {
        for (var start = 0; start < handles.Count; start += Coalescer<string>.MaxBatch)
        {
            var count = Math.Min(Coalescer<string>.MaxBatch, handles.Count - start);
            using var response = await _client.SendAsync(
                "ChangeMessageVisibilityBatch",
                (band.Url!, handles, start, count, (long)Math.Ceiling(visibility.TotalSeconds)),
                static (w, s) =>
                {
                    w.WriteString("QueueUrl", s.Item1);
                    w.WriteStartArray("Entries");
                    for (var i = 0; i < s.count; i++)
                    {
                        w.WriteStartObject();
                        w.WriteString("Id", i.ToString(CultureInfo.InvariantCulture));
                        w.WriteString("ReceiptHandle", s.handles[s.start + i]);
                        w.WriteNumber("VisibilityTimeout", s.Item5);
                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                },
                cancellationToken).ConfigureAwait(false);

            // A failed entry is a delivery that is no longer in flight (acknowledged, or lapsed and taken by another
            // consumer): the job store's lease decides who runs it, so there is nothing to do here.
        }
    }

    /// <summary>
    /// Sends the entries, and sends again (up to four more times, after 0.2, 0.4, 0.8 and 1.6 s) those SQS failed for a
    /// reason of its own (per entry, with HTTP 200): a submitted job whose enqueue fails stays Queued in the store with no
    /// message. A resent entry keeps its deduplication id. A resend that fails as a whole fails only the entries it
    /// carried: the others were sent.
    /// </summary>
    private async Task<Exception?[]> SendBatchAsync(Band band, SendEntry[] entries)
    {
        var results = await SendOnceAsync(band, entries).ConfigureAwait(false);
        for (var retry = 0; retry < 4; retry++)
        {
            var again = new List<int>();
            for (var i = 0; i < results.Length; i++)
            {
                if (results[i] is JobRunnerException { IsTransient: true })
                {
                    again.Add(i);
                }
            }

            if (again.Count == 0)
            {
                break;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(200 << retry), _time).ConfigureAwait(false);
            var resend = new SendEntry[again.Count];
            for (var j = 0; j < again.Count; j++)
            {
                resend[j] = entries[again[j]];
            }

            Exception?[] resent;
            try
            {
                resent = await SendOnceAsync(band, resend).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                for (var j = 0; j < again.Count; j++)
                {
                    results[again[j]] = e;
                }

                break;
            }

            for (var j = 0; j < again.Count; j++)
            {
                results[again[j]] = resent[j];
            }
        }

        return results;
    }

    private async Task<Exception?[]> SendOnceAsync(Band band, SendEntry[] entries)
    {
        using var response = await _client.SendAsync(
            "SendMessageBatch",
            (band.Url!, entries, _options.Fifo),
            static (w, s) =>
            {
                w.WriteString("QueueUrl", s.Item1);
                w.WriteStartArray("Entries");
                for (var i = 0; i < s.entries.Length; i++)
                {
                    var e = s.entries[i];
                    w.WriteStartObject();
                    w.WriteString("Id", i.ToString(CultureInfo.InvariantCulture));
                    w.WriteString("MessageBody", e.Body);
                    if (s.Fifo)
                    {
                        // The tenant is the message group: one tenant's jobs leave in order without holding up the
                        // others. A delayed job gets a group of its own, so that while it waits (invisible) it does not
                        // hold up its tenant's group.
                        w.WriteString("MessageGroupId", e.Delayed ? e.Tenant + "~" + e.JobId.ToString("N", null) : e.Tenant);
                        w.WriteString("MessageDeduplicationId", DedupId(e.JobId.ToString("N", null) + "-" + e.SentAtMs.ToString(CultureInfo.InvariantCulture)));
                    }
                    else if (e.Delay > TimeSpan.Zero)
                    {
                        var seconds = Math.Min((long)Math.Ceiling(e.Delay.TotalSeconds), (long)MaxDelay.TotalSeconds);
                        w.WriteNumber("DelaySeconds", seconds);
                    }

                    w.WriteEndObject();
                }

                w.WriteEndArray();
            },
            CancellationToken.None).ConfigureAwait(false);
        return BatchResults(response, entries.Length, "SendMessageBatch", ignoreCode: null);
    }

    private async Task<Exception?[]> DeleteBatchAsync(Band band, string[] handles)
    {
        using var response = await _client.SendAsync(
            "DeleteMessageBatch",
            (band.Url!, handles),
            static (w, s) =>
            {
                w.WriteString("QueueUrl", s.Item1);
                w.WriteStartArray("Entries");
                for (var i = 0; i < s.handles.Length; i++)
                {
                    w.WriteStartObject();
                    w.WriteString("Id", i.ToString(CultureInfo.InvariantCulture));
                    w.WriteString("ReceiptHandle", s.handles[i]);
                    w.WriteEndObject();
                }

                w.WriteEndArray();
            },
            CancellationToken.None).ConfigureAwait(false);

        // A receipt that is no longer valid belongs to a delivery that lapsed: another consumer has the message now,
        // and the job store's fence token keeps that one from running twice to completion.
        return BatchResults(response, handles.Length, "DeleteMessageBatch", ignoreCode: "ReceiptHandleIsInvalid");
    }

    private static Exception?[] BatchResults(JsonDocument response, int count, string action, string? ignoreCode)
    {
        var results = new Exception?[count];
        if (response.RootElement.TryGetProperty("Failed", out var failed) && failed.ValueKind == JsonValueKind.Array)
        {
            foreach (var f in failed.EnumerateArray())
            {
                if (!int.TryParse(f.GetProperty("Id").GetString(), NumberStyles.None, CultureInfo.InvariantCulture, out var index) || index < 0 || index >= count)
                {
                    continue;
                }

                var code = f.TryGetProperty("Code", out var c) ? c.GetString() ?? "" : "";
                if (code == ignoreCode || code.EndsWith("ReceiptHandleIsInvalid", StringComparison.Ordinal) && ignoreCode is not null)
                {
                    continue;
                }

                var senderFault = f.TryGetProperty("SenderFault", out var sf) && sf.ValueKind == JsonValueKind.True;
                var message = f.TryGetProperty("Message", out var m) ? m.GetString() : null;
                results[index] = new AwsServiceException("sqs", code, null, transient: !senderFault, $"SQS {action} failed for one entry with {code}: {message}");
            }
        }

        return results;
    }

    private static string DedupId(string value) => value.Length <= 128 ? value : value[..128];

    private async Task ResolveQueuesAsync(CancellationToken cancellationToken)
    {
        string? deadLetterArn = null;
        if (_options.DeadLetterQueueName is { } dlqName)
        {
            _deadLetterUrl = await ResolveAsync(dlqName, redriveTo: null, cancellationToken).ConfigureAwait(false);
            CheckKind(_deadLetterUrl, "SqsQueueOptions.DeadLetterQueueName");
            if (_options.CreateQueues)
            {
                deadLetterArn = await GetArnAsync(_deadLetterUrl, cancellationToken).ConfigureAwait(false);
            }
        }

        foreach (var band in _bands)
        {
            band.Url = await ResolveAsync(band.Name, deadLetterArn, cancellationToken).ConfigureAwait(false);
            CheckKind(band.Url, _options.Bands.Count == 0 ? "SqsQueueOptions.QueueName" : "SqsQueueOptions.Bands");
        }

        // A payload bucket that is not there fails the start, not the first large message.
        if (_payloads is not null)
        {
            await _payloads.EnsureExistsAsync(_options.PayloadStorage.CreateBucket, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Fails the start when a queue is not of the kind <see cref="SqsQueueOptions.Fifo"/> says: a FIFO queue refuses
    /// messages without a group, a standard queue ones with a group. SQS requires a FIFO queue's name to end in
    /// <c>.fifo</c> and allows no dot in a standard queue's name, so the name says which kind the queue is.
    /// </summary>
    private void CheckKind(string url, string setting)
    {
        var isFifo = url.TrimEnd('/').EndsWith(".fifo", StringComparison.Ordinal);
        if (isFifo != _options.Fifo)
        {
            throw new AwsServiceException(
                "sqs",
                "QueueKindMismatch",
                null,
                transient: false,
                isFifo
                    ? $"The SQS queue {url} (from {setting}) is a FIFO queue, but SqsQueueOptions.Fifo is false. Set SqsQueueOptions.Fifo = true, or use a standard queue."
                    : $"The SQS queue {url} (from {setting}) is a standard queue, but SqsQueueOptions.Fifo is true. Set SqsQueueOptions.Fifo = false, or use a FIFO queue (its name ends in .fifo).");
        }
    }

    private async Task<string> ResolveAsync(string nameOrUrl, string? redriveTo, CancellationToken cancellationToken)
    {
        if (nameOrUrl.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || nameOrUrl.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
        {
            // A URL: check that it exists (this also checks the credentials and the region).
            await GetArnAsync(nameOrUrl, cancellationToken).ConfigureAwait(false);
            return nameOrUrl;
        }

        var name = _options.Fifo && !nameOrUrl.EndsWith(".fifo", StringComparison.Ordinal) ? nameOrUrl + ".fifo" : nameOrUrl;
        try
        {
            using var found = await _client.SendAsync("GetQueueUrl", name, static (w, n) => w.WriteString("QueueName", n), cancellationToken).ConfigureAwait(false);
            return found.RootElement.GetProperty("QueueUrl").GetString()!;
        }
        catch (AwsServiceException e) when (e.Code == "QueueDoesNotExist")
        {
            if (!_options.CreateQueues)
            {
                throw new AwsServiceException("sqs", e.Code, e.StatusCode, transient: false, $"The SQS queue '{name}' does not exist in region {_options.Region}{(_options.ServiceUrl is { } url ? " at " + url : "")}. Create it, set SqsQueueOptions.CreateQueues = true to let JobRunner create it, or fix the queue name or SqsQueueOptions.Region.", e);
            }
        }

        using var created = await _client.SendAsync(
            "CreateQueue",
            (name, _options.Fifo, redriveTo, _options.MaxReceiveCount),
            static (w, s) =>
            {
                w.WriteString("QueueName", s.name);
                w.WriteStartObject("Attributes");

                // SQS's longest retention (14 days) instead of its default of 4: the job store, not the queue, decides
                // when a job is given up, and a message that ages out is a Queued job that never runs.
                w.WriteString("MessageRetentionPeriod", MaxRetentionSeconds);
                if (s.Fifo)
                {
                    w.WriteString("FifoQueue", "true");
                }

                if (s.redriveTo is not null && s.MaxReceiveCount is { } maxReceives)
                {
                    w.WriteString("RedrivePolicy", "{\"deadLetterTargetArn\":\"" + s.redriveTo + "\",\"maxReceiveCount\":" + maxReceives.ToString(CultureInfo.InvariantCulture) + "}");
                }

                w.WriteEndObject();
            },
            cancellationToken).ConfigureAwait(false);
        var queueUrl = created.RootElement.GetProperty("QueueUrl").GetString()!;
        Log.QueueCreated(_logger, name, queueUrl);
        return queueUrl;
    }

    private async Task<string> GetArnAsync(string url, CancellationToken cancellationToken)
    {
        using var attributes = await _client.SendAsync(
            "GetQueueAttributes",
            url,
            static (w, u) =>
            {
                w.WriteString("QueueUrl", u);
                w.WriteStartArray("AttributeNames");
                w.WriteStringValue("QueueArn");
                w.WriteEndArray();
            },
            cancellationToken).ConfigureAwait(false);
        return attributes.RootElement.GetProperty("Attributes").GetProperty("QueueArn").GetString()!;
    }

    /// <summary>One message to send, before it is batched.</summary>
    private readonly record struct SendEntry(string Body, TimeSpan Delay, string Tenant, JobId JobId, bool Delayed, long SentAtMs);

    /// <summary>One priority band: its queue and its batchers.</summary>
    private sealed class Band(int index, int minPriority, string name)
    {
        public int Index { get; } = index;

        public int MinPriority { get; } = minPriority;

        public string Name { get; } = name;

        public string? Url { get; set; }

        public List<Task> Polls { get; } = [];

        public Coalescer<SendEntry> Sends { get; set; } = null!;

        public Coalescer<string> Deletes { get; set; } = null!;
    }
}
