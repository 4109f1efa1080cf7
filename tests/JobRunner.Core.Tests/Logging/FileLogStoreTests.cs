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

    [Theory]
    [InlineData("2\t2026-11-2")]
    [InlineData("2\t2026-11-22T10:00:00.0000000Z\tstdout\tcut sho")]
    public async Task A_line_torn_by_a_crash_is_left_out_and_its_offset_is_written_again_on_a_line_of_its_own(string torn)
    {
        var id = JobId.New(_time);
        await new FileLogStore(_dir).AppendAsync(Lease(id, 1), Lines(LogStream.Output, "a", "b"), default);
        await File.AppendAllTextAsync(Path.Combine(_dir, id.ToString(), "attempt-1.log"), torn);

        var restarted = new FileLogStore(_dir);
        Assert.Equal(["a", "b"], (await restarted.ReadAsync(id, new LogQuery(), default)).Entries.Select(e => e.Message));
        var appended = await restarted.AppendAsync(Lease(id, 1), Lines(LogStream.Output, "c", "d"), default);
        var page = await restarted.ReadAsync(id, new LogQuery(), default);

        Assert.Equal([2L, 3L], appended.Select(e => e.Offset));
        Assert.Equal([("a", 0L), ("b", 1L), ("c", 2L), ("d", 3L)], page.Entries.Select(e => (e.Message, e.Offset)));
        Assert.Equal(4, page.NextOffset);
    }

    [Fact]
    public async Task A_line_being_written_is_not_read_until_its_end_is()
    {
        var store = new FileLogStore(_dir);
        var id = JobId.New(_time);
        await store.AppendAsync(Lease(id, 1), Lines(LogStream.Output, "a"), default);
        var path = Path.Combine(_dir, id.ToString(), "attempt-1.log");

        // Half of the next line is on disk, as in the middle of a write.
        await File.AppendAllTextAsync(path, "1\t2026-11-22T10:00:00.0000000Z\tstdout\thal");
        var during = await store.ReadAsync(id, new LogQuery(), default);
        await File.AppendAllTextAsync(path, "f a line\n");
        var after = await store.ReadAsync(id, new LogQuery { Offset = during.NextOffset }, default);

        Assert.Equal(["a"], during.Entries.Select(e => e.Message));
        Assert.Equal(1, during.NextOffset);
        Assert.Equal(["half a line"], after.Entries.Select(e => e.Message));
    }

    [Fact]
    public async Task Lines_longer_than_the_read_buffer_round_trip()
    {
        var store = new FileLogStore(_dir);
        var id = JobId.New(_time);
        var lines = new[] { new string('x', 200_000), "short", new string('y', 70_000) };
        await store.AppendAsync(Lease(id, 1), Lines(LogStream.Output, lines), default);

        Assert.Equal(lines, (await new FileLogStore(_dir).ReadAsync(id, new LogQuery(), default)).Entries.Select(e => e.Message));
    }

    [Fact]
    public async Task Idle_jobs_leave_the_cache_and_continue_their_offsets_from_the_files()
    {
        var store = new FileLogStore(_dir, maxCachedJobs: 4);
        var ids = Enumerable.Range(0, 20).Select(_ => JobId.New(_time)).ToArray();
        foreach (var id in ids)
        {
            await store.AppendAsync(Lease(id, 1), Lines(LogStream.Output, "first"), default);
            Assert.InRange(store.CachedJobs, 1, 8);
        }

        foreach (var id in ids)
        {
            Assert.Equal(1, Assert.Single(await store.AppendAsync(Lease(id, 1), Lines(LogStream.Output, "second"), default)).Offset);
        }
    }

    [Fact]
    public async Task A_job_that_keeps_logging_stays_in_the_cache_while_idle_ones_leave()
    {
        var store = new FileLogStore(_dir, maxCachedJobs: 4);
        var busy = JobId.New(_time);
        for (var i = 0; i < 40; i++)
        {
            await store.AppendAsync(Lease(busy, 1), Lines(LogStream.Output, "busy"), default);
            await store.AppendAsync(Lease(JobId.New(_time), 1), Lines(LogStream.Output, "once"), default);
            Assert.True(store.IsCached(busy), $"The busy job left the cache at round {i}.");
        }
    }

    [Fact]
    public async Task Read_UnknownJob_IsEmpty()
    {
        var page = await new FileLogStore(_dir).ReadAsync(JobId.New(_time), new LogQuery(), default);

        Assert.Empty(page.Entries);
    }
}
