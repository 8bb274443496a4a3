"""Federation (DESIGN step 11, issue 8), in the manner of OpenID Federation 1.0.

``service`` builds the broker's signed documents (entity configuration, subordinate statements
about its apps and holders, charter trust marks and their status); ``routes`` serves them;
``verify`` checks anyone's documents without a database or a network.
"""
