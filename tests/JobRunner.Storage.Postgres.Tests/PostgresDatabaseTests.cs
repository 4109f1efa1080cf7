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
}
