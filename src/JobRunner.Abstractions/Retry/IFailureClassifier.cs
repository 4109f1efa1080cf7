namespace JobRunner;

/// <summary>Decides whether a failure is transient or permanent.</summary>
public interface IFailureClassifier
{
    /// <summary>Classifies <paramref name="exception"/>.</summary>
    /// <param name="exception">The exception the attempt failed with, unwrapped.</param>
    /// <returns>The kind of failure.</returns>
    FailureKind Classify(Exception exception);
}
