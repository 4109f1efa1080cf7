using JobRunner.Testing;
using Npgsql;

namespace JobRunner.Storage.Postgres.Tests;

public sealed class PostgresLogAndDefinitionStoreTests : IAsyncLifetime
{
    private readonly PostgresTestDatabase _database = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 22, 10, 0, 0, TimeSpan.Zero));

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _database.DisposeAsync();

    private static JobLease Lease(JobId job, int attempt, long fence) => new(job, "w1", fence, attempt, DateTimeOffset.MaxValue);

    private LogLine Line(string message, LogStream stream = LogStream.Output) => new(_time.GetUtcNow(), stream, message);

    [Fact]
    public async Task Logs_continue_their_offsets_across_attempts_and_hosts_and_read_page_by_page()
    {
        var job = JobId.New(_time);
        var host1 = new PostgresLogStore(_database.Open(_time));
        var host2 = new PostgresLogStore(_database.Open(_time));

        var first = await host1.AppendAsync(Lease(job, 1, 10), [Line("a"), Line("b", LogStream.Error)], default);
        _time.Advance(TimeSpan.FromSeconds(1));
        var second = await host2.AppendAsync(Lease(job, 2, 11), [Line("c"), Line("d"), Line("e")], default);

        Assert.Equal([0L, 1L], first.Select(e => e.Offset));
        Assert.Equal([2L, 3L, 4L], second.Select(e => e.Offset));

        var page1 = await host2.ReadAsync(job, new LogQuery { Limit = 2 }, default);
        Assert.Equal(["a", "b"], page1.Entries.Select(e => e.Message));
        Assert.Equal(LogStream.Error, page1.Entries[1].Stream);
        Assert.Equal(2, page1.NextOffset);
        var page2 = await host1.ReadAsync(job, new LogQuery { Offset = page1.NextOffset, Limit = 2 }, default);
        Assert.Equal(["c", "d"], page2.Entries.Select(e => e.Message));
        var page3 = await host1.ReadAsync(job, new LogQuery { Offset = page2.NextOffset, Limit = 2 }, default);
        Assert.Equal(["e"], page3.Entries.Select(e => e.Message));
        Assert.Equal(5, page3.NextOffset);

        var attempt2 = await host1.ReadAsync(job, new LogQuery { Attempt = 2 }, default);
        Assert.Equal(["c", "d", "e"], attempt2.Entries.Select(e => e.Message));
        var since = await host1.ReadAsync(job, new LogQuery { Since = _time.GetUtcNow() }, default);
        Assert.Equal(["c", "d", "e"], since.Entries.Select(e => e.Message));
        Assert.Equal(second[0].Timestamp, since.Entries[0].Timestamp);

        var none = await host1.ReadAsync(JobId.New(_time), new LogQuery { Offset = 3 }, default);
        Assert.Empty(none.Entries);
        Assert.Equal(3, none.NextOffset);
    }

    [Fact]
    public async Task A_tail_read_while_lines_are_appended_skips_none()
    {
        var job = JobId.New(_time);
        var writer = new PostgresLogStore(_database.Open(_time));
        var reader = new PostgresLogStore(_database.Open(_time));
        await writer.AppendAsync(Lease(job, 1, 10), [Line("0"), Line("1")], default);

        // Lines committed between the read's two statements (its end of the log and its lines).
        var once = 0;
        reader.BetweenReadStatements = () =>
        {
            if (Interlocked.Exchange(ref once, 1) == 0)
            {
                writer.AppendAsync(Lease(job, 1, 10), [Line("2"), Line("3")], default).AsTask().GetAwaiter().GetResult();
            }
        };
        var seen = new List<string>();
        var offset = 0L;
        for (var i = 0; i < 3; i++)
        {
            var page = await reader.ReadAsync(job, new LogQuery { Offset = offset, Limit = 100 }, default);
            seen.AddRange(page.Entries.Select(e => e.Message));
            offset = page.NextOffset;
        }

        Assert.Equal(["0", "1", "2", "3"], seen);
        Assert.Equal(4, offset);
    }

    [Fact]
    public async Task Concurrent_writers_of_one_job_get_distinct_offsets()
    {
        var job = JobId.New(_time);
        var stores = Enumerable.Range(0, 4).Select(_ => new PostgresLogStore(_database.Open(_time))).ToArray();

        var written = await Task.WhenAll(Enumerable.Range(0, 40).Select(i => stores[i % 4].AppendAsync(Lease(job, 1, 1), [Line($"{i}-0"), Line($"{i}-1")], default).AsTask()));

        var offsets = written.SelectMany(w => w.Select(e => e.Offset)).Order().ToArray();
        Assert.Equal(Enumerable.Range(0, 80).Select(i => (long)i), offsets);
        var read = await stores[0].ReadAsync(job, new LogQuery { Limit = 100 }, default);
        Assert.Equal(80, read.Entries.Count);
        Assert.All(written, w => Assert.Equal(w[0].Offset + 1, w[1].Offset));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task An_append_retried_after_its_commits_reply_was_lost_writes_its_lines_once(bool acrossHosts)
    {
        // The retry's back-off runs on the real clock.
        var job = JobId.New(_time);
        var store = new PostgresLogStore(_database.Open(TimeProvider.System, o => o.LogEventsAcrossHosts = acrossHosts));
        await store.AppendAsync(Lease(job, 1, 1), [Line("before")], default);
        store.AfterAppend = tries =>
        {
            if (tries == 1)
            {
                throw new NpgsqlException("The connection broke after the commit.", new IOException("Connection reset by peer"));
            }
        };

        var written = await store.AppendAsync(Lease(job, 1, 1), [Line("a"), Line("b")], default);
        store.AfterAppend = null;
        var after = await store.AppendAsync(Lease(job, 1, 1), [Line("after")], default);

        Assert.Equal([1L, 2L], written.Select(e => e.Offset));
        Assert.Equal(3L, after[0].Offset);
        Assert.Equal(["before", "a", "b", "after"], (await store.ReadAsync(job, new LogQuery(), default)).Entries.Select(e => e.Message));
    }

    [Fact]
    public async Task An_append_retried_while_its_first_try_is_still_in_flight_waits_for_it_and_writes_nothing_again()
    {
        var job = JobId.New(_time);
        var store = new PostgresLogStore(_database.Open(_time));
        await store.AppendAsync(Lease(JobId.New(_time), 1, 1), [Line("migrated")], default);
        var key = Guid.NewGuid();

        // The first try, still open on the server: the job's head taken and its one line written, not committed yet.
        await using var first = new NpgsqlConnection(_database.ConnectionString + ";Pooling=false");
        await first.OpenAsync();
        await using var transaction = await first.BeginTransactionAsync();
        await using (var command = new NpgsqlCommand(
            $"INSERT INTO \"{_database.Schema}\".job_log_heads VALUES (@job, 1); INSERT INTO \"{_database.Schema}\".job_logs (job_id, \"offset\", attempt, at, stream, message, batch) VALUES (@job, 0, 1, now(), 0, 'a', @key)",
            first))
        {
            command.Parameters.AddWithValue("job", job.Value);
            command.Parameters.AddWithValue("key", key);
            await command.ExecuteNonQueryAsync();
        }

        // The retry does not see it yet, waits for the head, and once the first try commits finds what it wrote.
        store.AppendKey = () => key;
        store.TriesBefore = 1;
        var retry = store.AppendAsync(Lease(job, 1, 1), [Line("a")], default).AsTask();
        await _database.WaitForLockWaitAsync("The retry never waited for the first try.");

        await transaction.CommitAsync();
        var written = await retry.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(0L, Assert.Single(written).Offset);
        Assert.Equal(["a"], (await store.ReadAsync(job, new LogQuery(), default)).Entries.Select(e => e.Message));
    }

    [Fact]
    public async Task An_append_retried_after_its_first_try_failed_writes_its_lines()
    {
        var job = JobId.New(_time);
        var store = new PostgresLogStore(_database.Open(TimeProvider.System));
        await store.AppendAsync(Lease(job, 1, 1), [Line("before")], default);

        // The first try's work undone, as if it had not committed, then the failure.
        store.AfterAppend = tries =>
        {
            if (tries == 1)
            {
                _database.ExecuteAsync($"DELETE FROM {{s}}.job_logs WHERE job_id = '{job.Value}' AND \"offset\" > 0; UPDATE {{s}}.job_log_heads SET next_offset = 1 WHERE job_id = '{job.Value}'").GetAwaiter().GetResult();
                throw new NpgsqlException("The connection broke before the commit.", new IOException("Connection reset by peer"));
            }
        };

        var written = await store.AppendAsync(Lease(job, 1, 1), [Line("a"), Line("b")], default);

        Assert.Equal([1L, 2L], written.Select(e => e.Offset));
        Assert.Equal(["before", "a", "b"], (await store.ReadAsync(job, new LogQuery(), default)).Entries.Select(e => e.Message));
    }

    [Fact]
    public async Task A_line_with_a_NUL_is_kept_with_a_replacement_character()
    {
        var job = JobId.New(_time);
        var store = new PostgresLogStore(_database.Open(_time));

        var written = await store.AppendAsync(Lease(job, 1, 1), [Line("a\0b")], default);

        Assert.Equal("a\uFFFDb", written[0].Message);
        Assert.Equal("a\uFFFDb", (await store.ReadAsync(job, new LogQuery(), default)).Entries[0].Message);
    }

    [Fact]
    public async Task Definitions_keep_every_version_and_resolve_aliases_across_hosts()
    {
        var host1 = new PostgresDefinitionStore(_database.Open(_time));
        var host2 = new PostgresDefinitionStore(_database.Open(_time));
        var definition = new JobDefinition
        {
            Name = "resize",
            Aliases = ["thumbs"],
            Description = "Resizes images",
            Spec = new ContainerSpec
            {
                Image = "registry.local/resize:1",
                Command = ["resize"],
                Args = ["--size", "{{size}}"],
                Env = [new EnvVar("MODE", "fast"), EnvVar.Secret("TOKEN", "s3cret")],
                Resources = new ContainerResources { CpuMillicores = 500, MemoryMb = 256 },
                NodeSelector = new Dictionary<string, string> { ["disk"] = "ssd" },
                Tolerations = [new Toleration("gpu", TolerationOperator.Exists)],
                Timeout = TimeSpan.FromMinutes(5),
            },
            Parameters = [new DefinitionParameter("size", ParameterType.Integer, Required: true) { Min = 1, Max = 4096 }],
            Retry = RetryPolicy.Exponential(TimeSpan.FromSeconds(1), 4, TimeSpan.FromMinutes(1), useJitter: false),
            Priority = 7,
        };

        var v1 = await host1.CreateAsync(definition, default);
        _time.Advance(TimeSpan.FromMinutes(1));
        var v2 = await host2.UpdateAsync(definition with { Aliases = ["small"], Description = "v2" }, expectedVersion: 1, default);

        Assert.Equal((1, 2), (v1.Version, v2.Version));
        var latest = await host1.GetAsync("small", version: null, default);
        Assert.NotNull(latest);
        Assert.Equal(2, latest.Version);
        Assert.Equal("v2", latest.Description);
        Assert.Equal(_time.GetUtcNow(), latest.UpdatedAt);
        Assert.Null(await host1.GetAsync("thumbs", version: null, default));
        var first = await host2.GetAsync("resize", version: 1, default);
        Assert.NotNull(first);
        Assert.Equal("Resizes images", first.Description);
        Assert.Equal(definition.Retry, first.Retry);
        Assert.Equal(definition.Spec.Env, first.Spec.Env);
        Assert.Equal(definition.Spec.Args, first.Spec.Args);
        Assert.Equal("ssd", first.Spec.NodeSelector["disk"]);
        Assert.Equal(definition.Spec.Tolerations, first.Spec.Tolerations);
        Assert.Equal(definition.Spec.Resources, first.Spec.Resources);
        Assert.Equal(definition.Spec.Timeout, first.Spec.Timeout);
        Assert.Equal(definition.Parameters, first.Parameters, (a, b) => a.Name == b.Name && a.Type == b.Type && a.Required == b.Required && a.Min == b.Min && a.Max == b.Max);
        Assert.Equal(7, first.Priority);

        await host1.CreateAsync(new JobDefinition { Name = "alpha", Spec = new ContainerSpec { Image = "a" } }, default);
        Assert.Equal(["alpha", "resize"], (await host2.ListAsync(default)).Select(d => d.Name));
        Assert.Equal(2, (await host2.ListAsync(default))[1].Version);

        Assert.True(await host2.DeleteAsync("resize", default));
        Assert.False(await host2.DeleteAsync("resize", default));
        Assert.Null(await host1.GetAsync("small", version: null, default));
        Assert.Null(await host1.GetAsync("resize", version: 1, default));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_definition_write_retried_after_its_commits_reply_was_lost_writes_one_version(bool update)
    {
        // The retry's back-off runs on the real clock.
        var store = new PostgresDefinitionStore(_database.Open(TimeProvider.System));
        if (update)
        {
            await store.CreateAsync(new JobDefinition { Name = "a", Spec = new ContainerSpec { Image = "i" } }, default);
        }

        store.AfterWrite = tries =>
        {
            if (tries == 1)
            {
                throw new NpgsqlException("The connection broke after the commit.", new IOException("Connection reset by peer"));
            }
        };
        var definition = new JobDefinition { Name = "a", Spec = new ContainerSpec { Image = "i2" } };

        var written = update ? await store.UpdateAsync(definition, expectedVersion: 1, default) : await store.CreateAsync(definition, default);

        Assert.Equal(update ? 2 : 1, written.Version);
        Assert.Equal(update ? 2L : 1L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.definitions WHERE name = 'a'"));
        Assert.Equal("i2", (await store.GetAsync("a", version: null, default))!.Spec.Image);
    }

    [Fact]
    public async Task A_definition_deleted_while_an_update_commits_leaves_no_version_behind()
    {
        var store = new PostgresDefinitionStore(_database.Open(_time));
        await store.CreateAsync(new JobDefinition { Name = "a", Spec = new ContainerSpec { Image = "i" } }, default);

        // An update on another host, between its writes and its commit (under the writers' lock, as UpdateAsync does).
        await using var other = new Npgsql.NpgsqlConnection(_database.ConnectionString);
        await other.OpenAsync();
        var updating = await other.BeginTransactionAsync();
        var schema = $"\"{_database.Schema}\"";
        await using (var write = new Npgsql.NpgsqlCommand(
            $"SELECT pg_advisory_xact_lock(hashtext('{schema}.definitions')); " +
            $"INSERT INTO {schema}.definitions (name, version, body, retry, updated_at) SELECT name, 2, body, retry, updated_at FROM {schema}.definitions WHERE name = 'a'; " +
            $"UPDATE {schema}.definition_heads SET latest = 2 WHERE name = 'a'",
            other,
            updating))
        {
            await write.ExecuteNonQueryAsync();
        }

        var deleting = store.DeleteAsync("a", default).AsTask();
        for (var i = 0; await _database.ScalarAsync<long>("SELECT count(*) FROM pg_locks WHERE NOT granted") == 0; i++)
        {
            Assert.True(i < 3000, "The delete never waited for the update.");
            await Task.Delay(TimeSpan.FromMilliseconds(10), TimeProvider.System);
        }

        await updating.CommitAsync();

        Assert.True(await deleting.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(0L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.definitions WHERE name = 'a'"));
        await store.CreateAsync(new JobDefinition { Name = "a", Spec = new ContainerSpec { Image = "i" } }, default);
        Assert.Equal(2, (await store.UpdateAsync(new JobDefinition { Name = "a", Spec = new ContainerSpec { Image = "i2" } }, expectedVersion: 1, default)).Version);
    }

    [Fact]
    public async Task Definition_conflicts_are_validation_errors_that_name_the_fix_and_change_nothing()
    {
        var store = new PostgresDefinitionStore(_database.Open(_time));
        await store.CreateAsync(new JobDefinition { Name = "a", Aliases = ["x"], Spec = new ContainerSpec { Image = "i" } }, default);
        await store.UpdateAsync(new JobDefinition { Name = "a", Aliases = ["x"], Spec = new ContainerSpec { Image = "i2" } }, expectedVersion: 1, default);

        var taken = await Assert.ThrowsAsync<JobValidationException>(() => store.CreateAsync(new JobDefinition { Name = "a", Spec = new ContainerSpec { Image = "i" } }, default).AsTask());
        Assert.Contains("already exists", taken.Message, StringComparison.Ordinal);
        var aliasAsName = await Assert.ThrowsAsync<JobValidationException>(() => store.CreateAsync(new JobDefinition { Name = "x", Spec = new ContainerSpec { Image = "i" } }, default).AsTask());
        Assert.Contains("already exists", aliasAsName.Message, StringComparison.Ordinal);
        var aliasTaken = await Assert.ThrowsAsync<JobValidationException>(() => store.CreateAsync(new JobDefinition { Name = "b", Aliases = ["x"], Spec = new ContainerSpec { Image = "i" } }, default).AsTask());
        Assert.Contains("Alias 'x'", aliasTaken.Message, StringComparison.Ordinal);
        var aliasIsName = await Assert.ThrowsAsync<JobValidationException>(() => store.CreateAsync(new JobDefinition { Name = "b", Aliases = ["a"], Spec = new ContainerSpec { Image = "i" } }, default).AsTask());
        Assert.Contains("Alias 'a'", aliasIsName.Message, StringComparison.Ordinal);
        var stale = await Assert.ThrowsAsync<JobValidationException>(() => store.UpdateAsync(new JobDefinition { Name = "a", Spec = new ContainerSpec { Image = "i3" } }, expectedVersion: 1, default).AsTask());
        Assert.Contains("at version 2, not 1", stale.Message, StringComparison.Ordinal);
        var missing = await Assert.ThrowsAsync<JobValidationException>(() => store.UpdateAsync(new JobDefinition { Name = "nope", Spec = new ContainerSpec { Image = "i" } }, expectedVersion: null, default).AsTask());
        Assert.Contains("Create it first", missing.Message, StringComparison.Ordinal);

        Assert.Null(await store.GetAsync("b", version: null, default));
        var a = await store.GetAsync("x", version: null, default);
        Assert.Equal(("a", 2, "i2"), (a!.Name, a.Version, a.Spec.Image));
    }

    [Fact]
    public async Task Concurrent_creates_of_one_name_store_exactly_one()
    {
        var stores = Enumerable.Range(0, 4).Select(_ => new PostgresDefinitionStore(_database.Open(_time))).ToArray();

        var results = await Task.WhenAll(stores.Select(async (s, i) =>
        {
            try
            {
                await s.CreateAsync(new JobDefinition { Name = "once", Spec = new ContainerSpec { Image = $"i{i}" } }, default);
                return true;
            }
            catch (JobValidationException)
            {
                return false;
            }
        }));

        Assert.Single(results, r => r);
        Assert.Equal(1, (await stores[0].GetAsync("once", version: null, default))!.Version);
    }
}
