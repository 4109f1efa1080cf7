using JobRunner.Logging;
using JobRunner.Testing;

namespace JobRunner.Tests.Logging;

public sealed class FileLogStoreTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("jobrunner-logs-").FullName;
    private readonly FakeTimeProvider _time = new();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private JobLease Lease(JobId id, int attempt) => new(id, "w", attempt, attempt, _time.GetUtcNow().AddMinutes(1));

    private LogLine[] Lines(LogStream stream, params string[] messages) => [.. messages.Select(m => new LogLine(_time.GetUtcNow(), stream, m))];

    [Fact]
    public async Task AppendAndRead_RoundTripsEveryField()
    {
        var store = new FileLogStore(_dir);
        var id = JobId.New(_time);
        await store.AppendAsync(Lease(id, 1), Lines(LogStream.Output, "plain", "tab\there", "multi\nline \\ back"), default);
        await store.AppendAsync(Lease(id, 1), Lines(LogStream.Error, "oops"), default);

        var page = await store.ReadAsync(id, new LogQuery(), default);

        Assert.Equal(["plain", "tab\there", "multi\nline \\ back", "oops"], page.Entries.Select(e => e.Message));
        Assert.Equal([0L, 1, 2, 3], page.Entries.Select(e => e.Offset));
        Assert.Equal(LogStream.Error, page.Entries[3].Stream);
        Assert.Equal(_time.GetUtcNow(), page.Entries[0].Timestamp);
        Assert.Equal(4, page.NextOffset);
    }

    [Fact]
    public async Task Read_PagesByOffsetAcrossAttempts()
    {
        var store = new FileLogStore(_dir);
        var id = JobId.New(_time);
        await store.AppendAsync(Lease(id, 1), Lines(LogStream.Output, "a", "b"), default);
        await store.AppendAsync(Lease(id, 2), Lines(LogStream.Output, "c", "d"), default);

        var first = await store.ReadAsync(id, new LogQuery { Limit = 3 }, default);
        var second = await store.ReadAsync(id, new LogQuery { Offset = first.NextOffset, Limit = 3 }, default);
        var attempt2 = await store.ReadAsync(id, new LogQuery { Attempt = 2 }, default);

        Assert.Equal(["a", "b", "c"], first.Entries.Select(e => e.Message));
        Assert.Equal(3, first.NextOffset);
        Assert.Equal(["d"], second.Entries.Select(e => e.Message));
        Assert.Equal([("c", 2), ("d", 2)], attempt2.Entries.Select(e => (e.Message, e.Attempt)));
    }

    [Fact]
    public async Task Read_Since_SkipsOlderLines()
    {
        var store = new FileLogStore(_dir);
        var id = JobId.New(_time);
        await store.AppendAsync(Lease(id, 1), Lines(LogStream.Output, "old"), default);
        _time.Advance(TimeSpan.FromMinutes(5));
        await store.AppendAsync(Lease(id, 1), Lines(LogStream.Output, "new"), default);

        var page = await store.ReadAsync(id, new LogQuery { Since = _time.GetUtcNow() }, default);

        Assert.Equal(["new"], page.Entries.Select(e => e.Message));
    }

    [Fact]
    public async Task NewInstance_AfterRestart_ReadsOldLinesAndContinuesOffsets()
    {
        var id = JobId.New(_time);
        await new FileLogStore(_dir).AppendAsync(Lease(id, 1), Lines(LogStream.Output, "before restart", "second"), default);

        var restarted = new FileLogStore(_dir);
        var appended = await restarted.AppendAsync(Lease(id, 2), Lines(LogStream.Output, "after restart"), default);
        var page = await restarted.ReadAsync(id, new LogQuery(), default);

        Assert.Equal(2, Assert.Single(appended).Offset);
        Assert.Equal(["before restart", "second", "after restart"], page.Entries.Select(e => e.Message));
        Assert.True(File.Exists(Path.Combine(_dir, id.ToString(), "attempt-1.log")));
        Assert.True(File.Exists(Path.Combine(_dir, id.ToString(), "attempt-2.log")));
    }

    [Fact]
    public async Task Read_UnknownJob_IsEmpty()
    {
        var page = await new FileLogStore(_dir).ReadAsync(JobId.New(_time), new LogQuery(), default);

        Assert.Empty(page.Entries);
    }
}
