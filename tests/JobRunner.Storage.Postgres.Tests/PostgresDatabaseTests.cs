using JobRunner.Testing;
using Npgsql;

namespace JobRunner.Storage.Postgres.Tests;

/// <summary>The data sources' settings; no server is contacted (data sources open connections on first use).</summary>
public sealed class PostgresDatabaseTests
{
    [Theory]
    [InlineData("Host=127.0.0.1;Database=jobs", PostgresDatabase.DefaultMaxAutoPrepare)]
    [InlineData("Host=127.0.0.1;Database=jobs;Max Auto Prepare=0", 0)]
    [InlineData("Host=127.0.0.1;Database=jobs;MaxAutoPrepare=5", 5)]
    public async Task Statements_are_prepared_automatically_unless_the_connection_string_says_otherwise(string connectionString, int expected)
    {
        foreach (var durable in new[] { true, false })
        {
            var options = new PostgresOptions { ConnectionString = connectionString, SynchronousCommitForWorkers = durable };
            await using var db = new PostgresDatabase(Microsoft.Extensions.Options.Options.Create(options), new FakeTimeProvider());

            Assert.Equal(expected, new NpgsqlConnectionStringBuilder(db.Client.ConnectionString).MaxAutoPrepare);
            Assert.Equal(expected, new NpgsqlConnectionStringBuilder(db.Worker.ConnectionString).MaxAutoPrepare);
        }
    }

    [Theory]
    [InlineData("Host=127.0.0.1;Database=jobs", true)]
    [InlineData("Host=127.0.0.1;Database=jobs;No Reset On Close=false", false)]
    [InlineData("Host=127.0.0.1;Database=jobs;NoResetOnClose=false", false)]
    public async Task Pooled_connections_are_not_reset_unless_the_connection_string_says_otherwise(string connectionString, bool expected)
    {
        foreach (var durable in new[] { true, false })
        {
            var options = new PostgresOptions { ConnectionString = connectionString, SynchronousCommitForWorkers = durable };
            await using var db = new PostgresDatabase(Microsoft.Extensions.Options.Options.Create(options), new FakeTimeProvider());

            Assert.Equal(expected, new NpgsqlConnectionStringBuilder(db.Client.ConnectionString).NoResetOnClose);
            Assert.Equal(expected, new NpgsqlConnectionStringBuilder(db.Worker.ConnectionString).NoResetOnClose);
        }
    }

    [Fact]
    public async Task A_wake_up_notify_carries_the_jobs_it_offers_to_other_hosts_only()
    {
        await using var a = new PostgresDatabase(Microsoft.Extensions.Options.Options.Create(new PostgresOptions { ConnectionString = "Host=127.0.0.1" }), new FakeTimeProvider());
        await using var b = new PostgresDatabase(Microsoft.Extensions.Options.Options.Create(new PostgresOptions { ConnectionString = "Host=127.0.0.1" }), new FakeTimeProvider());
        var at = new DateTimeOffset(2026, 11, 23, 8, 0, 0, 123, TimeSpan.Zero).AddTicks(4567);
        List<QueuedJob> jobs =
        [
            new() { Id = JobId.New(TimeProvider.System), Priority = 7, Tenant = "acme", Workload = "resize", EnqueuedAt = at },
            new() { Id = JobId.New(TimeProvider.System), Priority = 1, Tenant = "テナント", Workload = "w\"x", ConcurrencyKey = "k1", Affinity = "gpu=true", EnqueuedAt = at.AddSeconds(1) },
        ];

        var payload = a.WriteOffers(jobs);

        Assert.Equal(jobs, b.ReadOffers(payload));
        Assert.Empty(a.ReadOffers(payload)!);
        Assert.Null(b.ReadOffers(""));
        Assert.Null(b.ReadOffers("{\"i\":\"x\"}"));
        Assert.Null(b.ReadOffers("not json"));

        // Over NOTIFY's payload limit: a plain wake-up instead.
        jobs.Add(jobs[0] with { Affinity = new string('a', PostgresDatabase.MaxNotifyPayloadBytes) });
        Assert.Equal("", a.WriteOffers(jobs));
    }
}

/// <summary>How durably a batch commits (<see cref="JobRows.IndexPathsOnly"/>), read back inside the batch's transaction.</summary>
public sealed class CommitModeTests
{
    [Theory]
    [InlineData("off", "Durable", "on")]
    [InlineData("local", "Durable", "local")]
    [InlineData("remote_apply", "Durable", "remote_apply")]
    [InlineData("on", "Durable", "on")]
    [InlineData("on", "Relaxed", "off")]
    [InlineData("remote_apply", "Connection", "remote_apply")]
    public async Task A_lease_batch_commits_at_least_durably_and_a_dequeue_batch_without_waiting(string connection, string mode, string expected)
    {
        var builder = new NpgsqlConnectionStringBuilder(PostgresTestDatabase.RequireConnectionString()) { Options = "-c synchronous_commit=" + connection };
        await using var source = NpgsqlDataSource.Create(builder.ConnectionString);
        await using var c = await source.OpenConnectionAsync();
        await using var batch = new NpgsqlBatch(c) { BatchCommands = { JobRows.IndexPathsOnly(Enum.Parse<CommitMode>(mode)), new("SELECT current_setting('synchronous_commit')") } };
        await using var reader = await batch.ExecuteReaderAsync();
        await reader.NextResultAsync();
        Assert.True(await reader.ReadAsync());

        Assert.Equal(expected, reader.GetString(0));
    }
}
