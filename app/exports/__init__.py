"""Answer packages: the streamed, signed, encrypted ZIP an access or portability request
answers with, its download, and its expiry."""
