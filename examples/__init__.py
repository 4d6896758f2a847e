"""Example user code: modules a config names by dotted path (see conf/model/digits_se.yaml and
conf/model/digits_user_model.yaml). Run the runner from the repository root, or put your own
package on the Python path, and name your classes the same way."""
