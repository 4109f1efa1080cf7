using System.Diagnostics;
using Microsoft.Extensions.Options;

namespace JobRunner.InMemory;

/// <summary>
/// The embedded log store: a bounded ring of lines per job (the oldest lines are dropped and counted), and at most
/// <see cref="InMemoryStoreOptions.MaxFinishedJobs"/> jobs' logs (the log written to least recently goes first). An
/// evicted log leaves its end and its drop count behind (as many as there are logs), so that a job still running,
/// quiet for long enough to be evicted, continues its offsets where it left off and reports its lost lines as dropped.
/// </summary>
[DebuggerDisplay("Jobs = {_logs.Count}")]
internal sealed class InMemoryLogStore : ILogStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<JobId, JobLog> _logs = [];
    private readonly LinkedList<JobId> _order = new();
    // What an evicted log leaves behind, by eviction: a log evicted, written to and evicted again is in the order twice,
    // and only its latest eviction's entry may remove what it left.
    private readonly Dictionary<JobId, (long NextOffset, long Dropped, long Eviction)> _evicted = [];
    private readonly Queue<(JobId Job, long Eviction)> _evictedOrder = new();
    private long _evictions;
    private readonly int _maxLines;
    private readonly int _maxJobs;

    public InMemoryLogStore(IOptions<InMemoryStoreOptions> options)
    {
        _maxLines = options.Value.MaxLogLinesPerJob;
        _maxJobs = options.Value.MaxFinishedJobs;
    }

    public ValueTask<IReadOnlyList<LogEntry>> AppendAsync(JobLease lease, IReadOnlyList<LogLine> lines, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(lines);
        var entries = new LogEntry[lines.Count];
        lock (_lock)
        {
            if (!_logs.TryGetValue(lease.JobId, out var log))
            {
                log = new JobLog(_order.AddLast(lease.JobId));
                if (_evicted.Remove(lease.JobId, out var end))
                {
                    log.NextOffset = end.NextOffset;
                    log.Dropped = end.Dropped;
                }

                _logs.Add(lease.JobId, log);
                while (_order.Count > _maxJobs)
                {
                    // The log written to least recently goes first.
                    var oldest = _order.First!.Value;
                    _order.RemoveFirst();
                    _logs.Remove(oldest, out var gone);
                    var eviction = ++_evictions;
                    _evicted[oldest] = (gone!.NextOffset, gone.Dropped + gone.Lines.Count, eviction);
                    _evictedOrder.Enqueue((oldest, eviction));
                    while (_evictedOrder.Count > _maxJobs)
                    {
                        var (job, at) = _evictedOrder.Dequeue();
                        if (_evicted.TryGetValue(job, out var left) && left.Eviction == at)
                        {
                            _evicted.Remove(job);
                        }
                    }
                }
            }
            else if (log.Node != _order.Last)
            {
                _order.Remove(log.Node);
                _order.AddLast(log.Node);
            }

            for (var i = 0; i < lines.Count; i++)
            {
                var line = lines[i];
                var entry = new LogEntry(log.NextOffset++, lease.Attempt, line.Timestamp, line.Stream, line.Message);
                entries[i] = entry;
                log.Lines.Enqueue(entry);
                if (log.Lines.Count > _maxLines)
                {
                    log.Lines.Dequeue();
                    log.Dropped++;
                }
            }
        }

        return new(entries);
    }

    public ValueTask<LogPage> ReadAsync(JobId jobId, LogQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Offset, 0);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Limit, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(query.Limit, 10_000);
        lock (_lock)
        {
            if (!_logs.TryGetValue(jobId, out var log))
            {
                return new(_evicted.TryGetValue(jobId, out var end)
                    ? new LogPage([], Math.Max(query.Offset, end.NextOffset), end.Dropped)
                    : new LogPage([], query.Offset, 0));
            }

            var result = new List<LogEntry>(Math.Min(query.Limit, log.Lines.Count));
            var next = Math.Max(query.Offset, log.NextOffset);
            foreach (var entry in log.Lines)
            {
                if (entry.Offset < query.Offset
                    || (query.Attempt is { } attempt && entry.Attempt != attempt)
                    || (query.Since is { } since && entry.Timestamp < since))
                {
                    continue;
                }

                if (result.Count == query.Limit)
                {
                    next = entry.Offset;
                    break;
                }

                result.Add(entry);
            }

            return new(new LogPage(result, next, log.Dropped));
        }
    }

    private sealed class JobLog(LinkedListNode<JobId> node)
    {
        public LinkedListNode<JobId> Node { get; } = node;

        public Queue<LogEntry> Lines { get; } = new();

        public long NextOffset { get; set; }

        public long Dropped { get; set; }
    }
}
