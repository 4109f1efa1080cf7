namespace JobRunner.Storage.Postgres;

/// <summary>
/// The PostgreSQL storage cannot work as configured: the server cannot be reached, the credentials or permissions are
/// wrong, or the schema was migrated by a newer JobRunner. The message names the fix.
/// </summary>
public sealed class PostgresStorageException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="message">What is wrong and how to fix it.</param>
    /// <param name="innerException">The cause, if any.</param>
    public PostgresStorageException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <inheritdoc />
    public override bool IsTransient => false;
}
