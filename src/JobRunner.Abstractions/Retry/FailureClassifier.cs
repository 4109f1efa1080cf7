namespace JobRunner;

/// <summary>
/// A rule-based <see cref="IFailureClassifier"/>. Rules are tried in the order they were added; the first that matches
/// decides. When none matches, a <see cref="JobRunnerException"/> is classified by its <see cref="JobRunnerException.IsTransient"/>
/// and any other exception by <see cref="DefaultKind"/>.
/// </summary>
public sealed class FailureClassifier : IFailureClassifier
{
    private readonly List<(Func<Exception, bool> Match, FailureKind Kind)> _rules = [];

    /// <summary>Gets or sets the kind of an exception that no rule matches and that is not a <see cref="JobRunnerException"/>.</summary>
    /// <value>The default value is <see cref="FailureKind.Transient"/>: unknown failures are retried by the retry policy.</value>
    public FailureKind DefaultKind { get; set; } = FailureKind.Transient;

    /// <summary>Classifies exceptions of type <typeparamref name="TException"/> (and derived types) as transient.</summary>
    /// <typeparam name="TException">The exception type.</typeparam>
    /// <returns>The same classifier so that additional calls can be chained.</returns>
    public FailureClassifier Transient<TException>()
        where TException : Exception
        => When(static e => e is TException, FailureKind.Transient);

    /// <summary>Classifies exceptions of type <typeparamref name="TException"/> (and derived types) as permanent.</summary>
    /// <typeparam name="TException">The exception type.</typeparam>
    /// <returns>The same classifier so that additional calls can be chained.</returns>
    public FailureClassifier Permanent<TException>()
        where TException : Exception
        => When(static e => e is TException, FailureKind.Permanent);

    /// <summary>Classifies exceptions that match <paramref name="predicate"/> as <paramref name="kind"/>.</summary>
    /// <param name="predicate">The test.</param>
    /// <param name="kind">The kind of a matching exception.</param>
    /// <returns>The same classifier so that additional calls can be chained.</returns>
    public FailureClassifier When(Func<Exception, bool> predicate, FailureKind kind)
    {
        ArgumentNullException.ThrowIfNull(predicate);
        _rules.Add((predicate, kind));
        return this;
    }

    /// <inheritdoc />
    public FailureKind Classify(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        foreach (var (match, kind) in _rules)
        {
            if (match(exception))
            {
                return kind;
            }
        }

        return exception switch
        {
            JobRunnerException e => e.IsTransient ? FailureKind.Transient : FailureKind.Permanent,
            _ => DefaultKind,
        };
    }
}
